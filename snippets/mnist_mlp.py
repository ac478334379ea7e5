# %% setup
# Setup the cells below need: imports (torch, torchsummary, torchinfo, pyplot), device
import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torchinfo
import torchsummary

torch.manual_seed(0)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
gpu_name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
print(f"Device: {device}" + gpu_name)


# %% model
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()  # (batch, 1, 28, 28) -> (batch, 784)
        self.layer1 = nn.Linear(784, 128)  # 784 inputs -> 128 neurons
        self.relu = nn.ReLU()
        self.layer2 = nn.Linear(128, 10)  # 128 inputs -> 10 outputs, a logit per digit

    def forward(self, x):
        x = self.flatten(x)
        x = self.layer1(x)
        x = self.relu(x)
        x = self.layer2(x)
        return x


model = MLP().to(device)
print(model)

# %% torchsummary
# input_size is one sample (channels, height, width); device is the model's own.
torchsummary.summary(model, input_size=(1, 28, 28), device=device.type)

# %% torchinfo
# input_size with the batch axis; verbose=0 returns the table without printing it.
stats = torchinfo.summary(model, input_size=(1, 1, 28, 28), device=device, verbose=0)
print(stats)
params_bytes = stats.total_params * 4  # float32: 4 bytes each
mib, mb = params_bytes / 1024**2, params_bytes / 1000**2
print(f"Params: {params_bytes:,} bytes = {mib:.2f} MiB = {mb:.2f} MB")

# %% count
# A Linear layer holds inputs x outputs weights, plus one bias per output.
by_hand = {"layer1": 784 * 128 + 128, "layer2": 128 * 10 + 10}
print(f"{'layer':<8}{'by hand':>10}{'PyTorch':>10}")
for name, expected in by_hand.items():
    counted = sum(p.numel() for p in getattr(model, name).parameters())
    print(f"{name:<8}{expected:>10,}{counted:>10,}")
total = sum(p.numel() for p in model.parameters())
print(f"{'total':<8}{sum(by_hand.values()):>10,}{total:>10,}")
nbytes = total * 4  # float32: 4 bytes each
print(f"As float32: {total:,} x 4 bytes = {nbytes:,} bytes = {nbytes / 1024:.1f} KiB")

# %% diagram
# Drawing code: the model as a picture, each layer's parameters and output shape
# (the shapes come from a real forward pass of a batch of 64, caught by forward hooks).
plt.rcParams["font.size"] = 10
shapes = {}
hooks = [
    layer.register_forward_hook(lambda m, i, out, n=name: shapes.update({n: out.shape}))
    for name, layer in model.named_children()
]
with torch.no_grad():
    model(torch.zeros(64, 1, 28, 28, device=device))
for hook in hooks:
    hook.remove()


def describe(layer):
    """A short name: Linear(784 -> 128) rather than its full repr."""
    if isinstance(layer, nn.Linear):
        return f"nn.Linear({layer.in_features} → {layer.out_features})"
    return f"nn.{type(layer).__name__}()"


ARROW = {"arrowstyle": "->", "lw": 1.2}


layers = list(model.named_children())
fig, ax = plt.subplots(figsize=(7, 4.8), layout="constrained")
ax.set_xlim(0, 8.6)
ax.set_ylim(-2 * len(layers) - 0.9, 0.4)
ax.set_axis_off()
ax.text(3.35, 0, "input: (64, 1, 28, 28), 64 images of 1 × 28 × 28", ha="center")
top = -0.3  # where the next arrow starts
for k, (name, layer) in enumerate(layers):
    y = -1.5 - 2 * k  # the centre of this layer's box
    params = list(layer.named_parameters())
    count = sum(p.numel() for _, p in params)
    ax.annotate("", xy=(3.35, y + 0.6), xytext=(3.35, top), arrowprops=ARROW)
    colour = "#cfe2f3" if count else "#eeeeee"
    ax.add_patch(plt.Rectangle((0.2, y - 0.6), 6.3, 1.2, fc=colour, ec="black"))
    ax.text(0.4, y + 0.22, f"{name}: {describe(layer)}", va="center", weight="bold")
    parts = " + ".join(f"{p}{tuple(t.shape)} {t.numel():,}" for p, t in params)
    ax.text(0.4, y - 0.28, parts or "no parameters", va="center")
    ax.text(6.7, y + 0.22, f"{count:,}", va="center", weight="bold", size=12)
    ax.text(6.7, y - 0.28, "parameters", va="center")
    out = f"out: {tuple(shapes[name])}" + (" logits" if k == len(layers) - 1 else "")
    ax.text(3.55, y - 1.0, out, va="center", color="#444444")
    top = y - 0.6
ax.annotate("", xy=(3.35, y - 1.4), xytext=(3.35, top), arrowprops=ARROW)
total = sum(p.numel() for p in model.parameters())
footer = f"total: {total:,} parameters × 4 bytes = {4 * total:,} bytes (float32)"
ax.text(4.3, y - 1.8, footer, ha="center", weight="bold")
ax.set_title("The MNIST MLP, 784 → 128 → 10: parameters of each layer")
plt.show()

# %% exercise-hidden-256
# The MNIST MLP with a hidden layer of 256 instead of 128.
hidden = 256
wider = nn.Sequential(
    nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10)
)
n_wider = sum(p.numel() for p in wider.parameters())
print(f"hidden {hidden}: {n_wider:,} parameters = {n_wider * 4:,} bytes as float32")
