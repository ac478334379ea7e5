# %% setup
# The lesson's MNIST model: a two-layer MLP (Flatten -> Linear 784->128 -> ReLU -> Linear 128->10).
# Its structure shown by torchsummary and by torchinfo, and its 101,770 parameters counted by hand,
# layer by layer, and checked against PyTorch's own count.
import torch
import torch.nn as nn
import torchinfo
import torchsummary

torch.manual_seed(0)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print(f"Device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))

# %% model
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()          # (batch, 1, 28, 28) -> (batch, 784)
        self.layer1 = nn.Linear(784, 128)    # 784 inputs -> 128 neurons
        self.relu = nn.ReLU()
        self.layer2 = nn.Linear(128, 10)     # 128 inputs -> 10 outputs, one logit per digit

    def forward(self, x):
        x = self.flatten(x)
        x = self.layer1(x)
        x = self.relu(x)
        x = self.layer2(x)
        return x

model = MLP().to(device)
print(model)

# %% torchsummary
# torchsummary.summary defaults to device="cuda": on a CUDA machine with the model on the CPU (or on
# a CPU-only machine) its test input and the model would disagree. Pass the model's own device.
# input_size is one sample (channels, height, width): no batch size. Its "MB" are MiB (1024 x 1024 bytes).
torchsummary.summary(model, input_size=(1, 28, 28), device=device.type)

# %% torchinfo
# torchinfo wants the batch axis too: (batch, channels, height, width). In a script it prints the table
# by itself unless verbose=0; here it only returns it, and print() shows it once. Its MB are 10^6 bytes,
# and its "Total mult-adds (Units.MEGABYTES)" line counts millions of multiply-adds, not bytes.
stats = torchinfo.summary(model, input_size=(1, 1, 28, 28), device=device, verbose=0)
print(stats)
params_bytes = stats.total_params * 4
print(f"Both 'Params size' lines are {params_bytes:,} bytes: {params_bytes / 1024**2:.2f} MiB (torchsummary's "
      f"\"MB\") = {params_bytes / 1000**2:.2f} MB (torchinfo's)")

# %% count
# Parameters of a Linear layer: inputs x outputs weights, plus one bias per output.
layer1 = 784 * 128 + 128
layer2 = 128 * 10 + 10
print(f"{'layer':<8}{'arithmetic':<20}{'by hand':>10}{'PyTorch':>10}")
for name, arithmetic, expected in (("layer1", "784 x 128 + 128", layer1), ("layer2", "128 x 10 + 10", layer2)):
    counted = sum(p.numel() for p in getattr(model, name).parameters())
    assert counted == expected
    print(f"{name:<8}{arithmetic:<20}{expected:>10,}{counted:>10,}")
total = sum(p.numel() for p in model.parameters())
assert total == layer1 + layer2 == 101_770
print(f"{'total':<8}{'':<20}{layer1 + layer2:>10,}{total:>10,}")
print(f"Flatten and ReLU have no parameters. As float32: {total:,} x 4 bytes = {total * 4:,} bytes "
      f"= {total * 4 / 1024:.1f} KiB")
