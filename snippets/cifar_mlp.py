# %% setup
# Setup the cells below need: imports (torch, torchsummary, torchinfo), the device
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
    def __init__(self, input_size=3072, hidden_size=128, num_classes=10):
        super().__init__()
        self.flatten = nn.Flatten()  # (batch, 3, 32, 32) -> (batch, 3072)
        self.fc1 = nn.Linear(input_size, hidden_size)  # 3 x 32 x 32 = 3072 -> 128
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden_size, num_classes)  # 128 -> 10 logits, one a class

    def forward(self, x):
        x = self.flatten(x)  # (batch, 3072)
        x = self.fc1(x)  # (batch, 128)
        x = self.relu(x)
        x = self.fc2(x)  # (batch, 10)
        return x


model = MLP().to(device)
fake_images = torch.rand(4, 3, 32, 32, device=device)  # stand-ins, CIFAR-10's shape
logits = model(fake_images)
print(f"random batch {tuple(fake_images.shape)} -> logits {tuple(logits.shape)}")

# %% count
by_hand = {"fc1": 3072 * 128 + 128, "fc2": 128 * 10 + 10}
print(f"{'layer':<8}{'by hand':>10}{'PyTorch':>10}")
for name, expected in by_hand.items():
    counted = sum(p.numel() for p in getattr(model, name).parameters())
    print(f"{name:<8}{expected:>10,}{counted:>10,}")
total = sum(p.numel() for p in model.parameters())
print(f"{'total':<8}{sum(by_hand.values()):>10,}{total:>10,}")
nbytes = total * 4  # float32: 4 bytes each
size = f"{nbytes:,} bytes = {nbytes / 1024:,.1f} KiB = {nbytes / 1024**2:.2f} MiB"
print(f"As float32: {total:,} x 4 bytes = {size}")

# %% compare
mnist_total = sum(p.numel() for p in MLP(input_size=784).parameters())  # MNIST's MLP
print(f"MNIST MLP: {mnist_total:,} parameters, CIFAR-10 MLP: {total:,}")
ratio, wider = total / mnist_total, 3072 / 784
print(f"CIFAR-10 / MNIST: {ratio:.2f}x the parameters for {wider:.2f}x the inputs")
print(f"fc1's share of the CIFAR-10 MLP: {by_hand['fc1'] / total:.1%}")

# %% exercise-summaries
# Both summaries of the CIFAR-10 MLP: one colour image is (3, 32, 32).
torchsummary.summary(model, input_size=(3, 32, 32), device=device.type)
stats = torchinfo.summary(model, input_size=(1, 3, 32, 32), device=device, verbose=0)
print(stats)

# %% exercise-float16
# The CIFAR-10 MLP's parameters stored as float16 instead of float32.
half = MLP().to(device, torch.float16)
half_bytes = sum(p.nbytes for p in half.parameters())
print(f"float16: {half_bytes:,} bytes = {half_bytes / 1024**2:.2f} MiB")
