# %% setup
# Memory measured at each phase of one training step (model loaded, batch moved, forward, backward, optimizer step)
# for SGD and Adam at batch 64 and 1024, beside the arithmetic, plus what autograd really saves for backward.
# On CUDA the numbers come from PyTorch's allocator; on the CPU (which has no allocator statistics) they are counted
# from tensor sizes. Bytes are exact; KiB and MiB are 1024-based.
import os, socket, sys, contextlib, io, gc
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

class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.layer1 = nn.Linear(784, 128)
        self.relu = nn.ReLU()
        self.layer2 = nn.Linear(128, 10)
    def forward(self, x):
        return self.layer2(self.relu(self.layer1(self.flatten(x))))

def nbytes(tensors):
    """Exact bytes of some tensors on `device` (Adam's step counters stay on the CPU for a CUDA model)."""
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type == device.type)

transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
train_dataset = load_mnist(True, transform)
mnist_images, mnist_labels = next(iter(DataLoader(train_dataset, batch_size=1024, shuffle=False)))  # real MNIST
criterion = nn.CrossEntropyLoss()
if device.type == "cuda":                   # warm-up: the first matmul allocates cuBLAS's workspace, once
    warm = MLP().to(device)
    criterion(warm(mnist_images[:64].to(device)), mnist_labels[:64].to(device)).backward()
    del warm
    torch.cuda.synchronize()

# %% saved-tensors
def forward_recording_saved(model, images, labels):
    """Forward + loss while recording every tensor autograd saves for backward (shape, dtype, storage)."""
    saved = []
    def pack(t):
        saved.append((t, t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = model(images)
        loss = criterion(output, labels)
    return output, loss, saved

def classify(model, images, labels, saved):
    """For each unique saved storage: what it is and whether it is new memory (not a parameter or the batch)."""
    known = {p.untyped_storage().data_ptr(): f"parameter {name}" for name, p in model.named_parameters()}
    known[images.untyped_storage().data_ptr()] = "input images (the batch)"
    known[labels.untyped_storage().data_ptr()] = "labels (the batch)"
    unique = {}
    for t, ptr, size in saved:
        if ptr not in unique:
            new = f"NEW: {t.grad_fn.name().removesuffix('Backward0')} output" if t.grad_fn else "NEW: made in the loss"
            unique[ptr] = (known.get(ptr, new), tuple(t.shape), t.dtype, size, ptr in known)
    return unique                           # storage address -> (what, shape, dtype, bytes, already counted?)

def who_saved(loss):
    """Walk the backward graph: which node keeps which saved tensor (by storage)."""
    names, stack, seen = {}, [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for attr in dir(node):
            value = getattr(node, attr) if attr.startswith("_saved_") else None
            if torch.is_tensor(value):
                names.setdefault(value.untyped_storage().data_ptr(), []).append(f"{node.name()}.{attr[7:]}")
        stack.extend(f for f, _ in node.next_functions)
    return names

torch.manual_seed(0)
model = MLP().to(device)
images, labels = mnist_images.to(device), mnist_labels.to(device)
output, loss, saved = forward_recording_saved(model, images, labels)
saved_by = who_saved(loss)
print(f"Batch 1024: autograd saved {len(saved)} tensors for backward, in "
      f"{len({ptr for _, ptr, _ in saved})} distinct storages:")
print(f"  {'what it is':<36} {'shape':<12} {'dtype':<12} {'storage bytes':>14}  saved by")
storages = classify(model, images, labels, saved)
for ptr, (what, shape, dtype, size, _) in storages.items():
    print(f"  {what:<36} {str(shape):<12} {str(dtype):<12} {size:>14,}  {', '.join(saved_by.get(ptr, ['?']))}")
new_bytes = sum(size for *_, size, known in storages.values() if not known)
print(f"New memory autograd keeps at batch 1024: {new_bytes:,} bytes = {new_bytes / 1024:.2f} KiB "
      f"(the lesson counts 512 KiB = 524,288 bytes: the layer1 output)")
print("Why: layer1's matmul saves its input, a view of the batch (no new memory; it skips its weight because the")
print("batch needs no gradient). ReLU saves its output, and layer2 saves that same tensor as its input, plus a")
print("view of its weight (a parameter). Cross-entropy is log_softmax + nll_loss: log_softmax saves its output")
print("(1024 x 10 floats), nll_loss saves it again, the labels and a 4-byte total weight. The layer1 output")
print("before ReLU is saved by nobody and is freed as soon as ReLU has run; the logits are kept only by our variable.")
del output, loss, saved, model, images, labels   # free them before the measurements below

# %% phases
OPTIMIZERS = {"SGD": lambda ps: optim.SGD(ps, lr=0.01), "Adam": lambda ps: optim.Adam(ps, lr=1e-3)}

def measure_step(optimizer_name, batch_size):
    """One training step, phase by phase: counted tensor bytes (and on CUDA the allocator's figures)."""
    if device.type == "cuda":
        gc.collect(); torch.cuda.empty_cache(); torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    rows = []
    def record(phase, counted):
        if device.type == "cuda":
            torch.cuda.synchronize()
            rows.append((phase, counted, torch.cuda.memory_allocated() - baseline,
                         torch.cuda.max_memory_allocated() - baseline, torch.cuda.memory_reserved()))
        else:
            rows.append((phase, counted))
    torch.manual_seed(0)
    model = MLP().to(device)
    params = nbytes(model.parameters())
    record("model loaded", params)
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    images, labels = mnist_images[:batch_size].to(device), mnist_labels[:batch_size].to(device)
    batch = nbytes([images, labels])
    record("batch moved", params + batch)
    optimizer.zero_grad()
    output, loss, saved = forward_recording_saved(model, images, labels)
    activations = sum(size for *_, size, known in classify(model, images, labels, saved).values() if not known)
    del saved                               # our record must not keep the saved tensors alive
    kept = nbytes([output, loss])           # logits and loss, alive because our variables refer to them
    record("forward", params + batch + activations + kept)
    loss.backward()                         # frees the saved tensors, creates the gradients
    grads = nbytes(p.grad for p in model.parameters())
    record("backward", params + grads + batch + kept)
    optimizer.step()                        # the optimizer state appears at the first step
    state = nbytes(v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    record("optimizer step", params + grads + state + batch + kept)
    parts = dict(params=params, grads=grads, state=state, batch=batch, activations=activations, kept=kept)
    return rows, parts, baseline

# %% table
results = {}
for optimizer_name in OPTIMIZERS:
    for batch_size in (64, 1024):
        rows, parts, baseline = measure_step(optimizer_name, batch_size)
        results[optimizer_name, batch_size] = (rows, parts)
        print(f"{optimizer_name}, batch {batch_size}")
        if device.type == "cuda":
            print(f"  (CUDA allocator; already allocated before this step: {baseline:,} bytes, "
                  f"e.g. cuBLAS's workspace; 'allocated' and 'peak' below are above that)")
            print(f"  {'phase':<15} {'counted bytes':>14} {'allocated':>14} {'peak':>14} {'reserved':>14}")
            for phase, counted, allocated, peak, reserved in rows:
                print(f"  {phase:<15} {counted:>14,} {allocated:>14,} {peak:>14,} {reserved:>14,}")
        else:
            print("  (CPU: counted from tensor sizes, not an allocator)")
            print(f"  {'phase':<15} {'counted bytes':>14} {'KiB':>10}")
            for phase, counted in rows:
                print(f"  {phase:<15} {counted:>14,} {counted / 1024:>10.1f}")
        print(f"  parts: parameters {parts['params']:,} | gradients {parts['grads']:,} | optimizer state "
              f"{parts['state']:,} | batch {parts['batch']:,} | saved activations {parts['activations']:,} | "
              f"logits + loss {parts['kept']:,}")
if device.type == "cuda":
    print("On CUDA 'allocated' is above 'counted' because the allocator rounds every tensor up to a multiple of")
    print("512 bytes; 'peak' is higher still because of temporaries, such as the layer1 output before ReLU")
    print("(freed as soon as ReLU has run) and the buffers Adam's step uses while it updates.")

# %% summary
print("Summary (bytes)" + ("" if device.type == "cuda" else " - CPU: counted from tensor sizes, not an allocator"))
header = f"{'optimizer':<9} {'batch':>5} {'params+grads':>13} {'opt. state':>11} {'batch data':>11} " \
         f"{'activations':>12} {'after forward':>14} {'after step':>11}"
print(header + (f" {'CUDA peak':>11}" if device.type == "cuda" else ""))
for (optimizer_name, batch_size), (rows, parts) in results.items():
    line = (f"{optimizer_name:<9} {batch_size:>5} {parts['params'] + parts['grads']:>13,} {parts['state']:>11,} "
            f"{parts['batch']:>11,} {parts['activations']:>12,} {rows[2][1]:>14,} {rows[4][1]:>11,}")
    print(line + (f" {max(r[3] for r in rows):>11,}" if device.type == "cuda" else ""))
parts = results["Adam", 1024][1]
print(f"At batch 1024 the input batch ({parts['batch']:,} bytes) is the biggest item; Adam's state "
      f"({parts['state']:,}) outweighs all the activations autograd keeps ({parts['activations']:,}).")
