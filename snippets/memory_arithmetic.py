# %% setup
# Memory arithmetic for the lesson's MLPs: parameters, gradients, optimizer state, a data batch and activations,
# every figure computed from real tensors (numel() * element_size()), never typed in.
# Bytes are exact; KiB and MiB are 1024-based. The last cells set the lesson's rounded figures beside the exact ones.
import os, socket, sys, contextlib, io
import torch
import torch.nn as nn
import torch.optim as optim
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

DATA_ROOT = os.environ.get("LESSON_DATA", "./data")   # the lesson's ./data unless LESSON_DATA says otherwise
torch.manual_seed(0)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print(f"Device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))

def load_mnist(train, transform):
    """MNIST from DATA_ROOT, downloading it if it is not there; one clear sentence and exit 1 if that fails."""
    socket.setdefaulttimeout(10)            # never hang on a dead network
    try:
        with contextlib.redirect_stdout(io.StringIO()):   # torchvision prints each mirror it tries
            return datasets.MNIST(root=DATA_ROOT, train=train, download=True, transform=transform)
    except Exception as error:
        sys.exit(f"MNIST is not in {os.path.abspath(DATA_ROOT)}/MNIST/raw and could not be downloaded "
                 f"({type(error).__name__}): connect to the internet, or set LESSON_DATA to a folder "
                 f"that holds MNIST/raw.")

transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
train_dataset = load_mnist(True, transform)                 # real images for the data-batch cell

def tensor_bytes(tensors):
    """Exact bytes of some tensors: number of elements times bytes per element."""
    return sum(t.numel() * t.element_size() for t in tensors)

def show(label, n):
    """One line: exact bytes, then KiB and MiB (1024-based)."""
    print(f"{label:<50} {n:>11,} bytes = {n / 1024:>9.2f} KiB = {n / 2**20:>6.3f} MiB")

# %% models
class MLP(nn.Module):                       # the lesson's MNIST model: 1x28x28 -> 784 -> 128 -> 10
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.layer1 = nn.Linear(784, 128)
        self.relu = nn.ReLU()
        self.layer2 = nn.Linear(128, 10)
    def forward(self, x):
        return self.layer2(self.relu(self.layer1(self.flatten(x))))

class CifarMLP(nn.Module):                  # the same MLP for CIFAR-10: 3x32x32 -> 3072 -> 128 -> 10
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.layer1 = nn.Linear(3072, 128)
        self.relu = nn.ReLU()
        self.layer2 = nn.Linear(128, 10)
    def forward(self, x):
        return self.layer2(self.relu(self.layer1(self.flatten(x))))

model = MLP().to(device)
cifar_model = CifarMLP().to(device)
for name, m in [("MNIST MLP", model), ("CIFAR-10 MLP", cifar_model)]:
    print(f"{name}:")
    for pname, p in m.named_parameters():
        print(f"  {pname:<15} shape {str(tuple(p.shape)):<11} {p.numel():>9,} values x {p.element_size()} bytes "
              f"({p.dtype})")
    print(f"  {'total':<15} {'':<17} {sum(p.numel() for p in m.parameters()):>9,} parameters")

# %% parameters-gradients
param_bytes = tensor_bytes(model.parameters())
# A gradient has exactly its parameter's shape and dtype; backward creates them, so make them for real.
model(torch.randn(64, 1, 28, 28, device=device)).sum().backward()
grad_bytes = tensor_bytes(p.grad for p in model.parameters())
show("MNIST MLP parameters (float32)", param_bytes)
show("their gradients (after one backward)", grad_bytes)
show("parameters + gradients", param_bytes + grad_bytes)

# %% optimizer-state
def optimizer_state_bytes(optimizer):
    """Bytes of every tensor the optimizer keeps in optimizer.state, by state name and device."""
    totals = {}
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                where = (key, value.device.type)
                totals[where] = totals.get(where, 0) + tensor_bytes([value])
    return totals

dummy_images = torch.randn(64, 1, 28, 28, device=device)
dummy_labels = torch.randint(0, 10, (64,), device=device)
optimizer_bytes = {}
for name, make in [("SGD", lambda ps: optim.SGD(ps, lr=0.01)),
                   ("SGD with momentum", lambda ps: optim.SGD(ps, lr=0.01, momentum=0.9)),
                   ("Adam", lambda ps: optim.Adam(ps, lr=1e-3))]:
    m = MLP().to(device)
    optimizer = make(m.parameters())
    optimizer.zero_grad()
    nn.functional.cross_entropy(m(dummy_images), dummy_labels).backward()
    optimizer.step()                        # state is created lazily, at the first step
    parts = optimizer_state_bytes(optimizer)
    optimizer_bytes[name] = sum(parts.values())
    show(f"{name}: optimizer.state after one step", optimizer_bytes[name])
    for (key, where), n in sorted(parts.items()):
        print(f"    {key:<15} on {where}: {n:>9,} bytes")
adam_buffers = optimizer_bytes["Adam"] - 16
print(f"Adam keeps two buffers per parameter (exp_avg, exp_avg_sq): 2 x {param_bytes:,} = {2 * param_bytes:,} bytes,")
print(f"plus one 0-dimensional float32 'step' counter per parameter tensor: 4 tensors x 4 bytes = 16 bytes.")
print(f"(Unless Adam is 'capturable' or 'fused', PyTorch keeps those step counters on the CPU even for a CUDA model.)")
assert adam_buffers == 2 * param_bytes and optimizer_bytes["SGD with momentum"] == param_bytes

# %% data-batch
image, label = train_dataset[0]
images, labels = next(iter(DataLoader(train_dataset, batch_size=64, shuffle=False)))
images, labels = images.to(device), labels.to(device)
print(f"one image: shape {tuple(image.shape)}, {image.dtype}; a batch: {tuple(images.shape)} {images.dtype}, "
      f"labels {tuple(labels.shape)} {labels.dtype}")
show("one MNIST image (float32)", tensor_bytes([image]))
show("a batch of 64 images", tensor_bytes([images]))
show("its 64 labels (int64)", tensor_bytes([labels]))
show("batch of 64, images + labels", tensor_bytes([images, labels]))

# %% activations
with torch.no_grad():
    batch_1024 = torch.randn(1024, 1, 28, 28, device=device)
    hidden = model.layer1(model.flatten(batch_1024))         # the first layer's output
    logits = model.layer2(model.relu(hidden))
show(f"layer1 output at batch 1024 {tuple(hidden.shape)}", tensor_bytes([hidden]))
show(f"logits at batch 1024 {tuple(logits.shape)}", tensor_bytes([logits]))
print("What autograd really keeps for backward is measured in memory_measured.py (it is a little more).")

# %% lesson-vs-exact
def matches(lesson_figure, exact):
    """Does `exact` round to the lesson's figure at the lesson's number of significant digits?"""
    digits = len(str(lesson_figure).replace(".", "").strip("0"))
    return float(f"{exact:.{digits}g}") == lesson_figure

rows = [("parameters", 403, param_bytes),
        ("gradients", 403, grad_bytes),
        ("parameters + gradients", 806, param_bytes + grad_bytes),
        ("Adam state (2 buffers)", 806, adam_buffers),
        ("one image", 3, tensor_bytes([image])),
        ("batch of 64 images", 192, tensor_bytes([images])),
        ("layer1 output, batch 1024", 512, tensor_bytes([hidden]))]
print(f"{'item':<26} {'lesson says':>11} {'exact bytes':>11} {'binary':>10} {'decimal':>9} "
      f"{'as MiB':>8}  verdict")
for item, said, exact in rows:
    as_kib, as_kb = matches(said, exact / 1024), matches(said, exact / 1000)
    verdict = ("right as KiB and kB (rounded)" if as_kib and as_kb else "right as KiB" if as_kib
               else "right as kB" if as_kb else "neither KiB nor kB")
    print(f"{item:<26} {f'~{said} KB':>11} {exact:>11,} {exact / 1024:>6.1f} KiB "
          f"{exact / 1000:>6.1f} kB {exact / 2**20:>4.2f} MiB  {verdict}")
script = " / ".join(f"{exact / 2**20:.2f}" for _, _, exact in rows[:3] + rows[5:6])
print("The lesson's own script divides by 1024*1024 and prints 'MB': those are MiB, and its")
print(f"{script} are right. Its prose figures (403, 806, 192 'KB') are neither KiB nor kB.")

# %% cifar
cifar_params = tensor_bytes(cifar_model.parameters())
cifar_image = torch.zeros(3, 32, 32)        # CIFAR-10 is never downloaded: only its shape matters
cifar_model(cifar_image.unsqueeze(0).to(device)).sum().backward()
print(f"CIFAR-10 MLP: {sum(p.numel() for p in cifar_model.parameters()):,} parameters")
show("parameters (float32)", cifar_params)
show("gradients", tensor_bytes(p.grad for p in cifar_model.parameters()))
show("Adam state (2 buffers, without step counters)", 2 * cifar_params)
show("one CIFAR-10 image 3x32x32 (float32)", tensor_bytes([cifar_image]))
show("a batch of 64 images", 64 * tensor_bytes([cifar_image]))
with torch.no_grad():
    cifar_hidden = cifar_model.layer1(torch.zeros(1024, 3072, device=device))
show(f"layer1 output at batch 1024 {tuple(cifar_hidden.shape)}", tensor_bytes([cifar_hidden]))
print(f"layer1 holds {cifar_model.layer1.weight.numel() / sum(p.numel() for p in cifar_model.parameters()):.1%} "
      f"of the parameters: the input width (3072 vs 784) drives the size.")
