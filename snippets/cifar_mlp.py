# %% setup
# The lesson's MLP for CIFAR-10 colour images (3x32x32 = 3072 inputs, 128 hidden, 10
# classes), shown by torchsummary and torchinfo, with its 394,634 parameters counted
# layer by layer and compared with the MNIST MLP. CIFAR-10 is never downloaded: the
# model only needs the shape of one image.
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
print(model)
fake_images = torch.rand(4, 3, 32, 32, device=device)  # stand-ins, CIFAR-10's shape
logits = model(fake_images)
print(f"random batch {tuple(fake_images.shape)} -> logits {tuple(logits.shape)}")

# %% torchsummary
# torchsummary defaults to device="cuda"; pass the model's own device so this runs on
# CPU and GPU alike. input_size is one colour image (channels, height, width). Its "MB"
# are MiB (1024 x 1024 bytes).
torchsummary.summary(model, input_size=(3, 32, 32), device=device.type)

# %% torchinfo
# torchinfo needs the batch axis as well; verbose=0 so that it does not also print by
# itself. Its MB are 10^6 bytes.
stats = torchinfo.summary(model, input_size=(1, 3, 32, 32), device=device, verbose=0)
print(stats)

# %% count
fc1 = 3072 * 128 + 128
fc2 = 128 * 10 + 10
print(f"{'layer':<6}{'arithmetic':<20}{'by hand':>10}{'PyTorch':>10}")
for name, arithmetic, expected in (
    ("fc1", "3072 x 128 + 128", fc1),
    ("fc2", "128 x 10 + 10", fc2),
):
    counted = sum(p.numel() for p in getattr(model, name).parameters())
    assert counted == expected
    print(f"{name:<6}{arithmetic:<20}{expected:>10,}{counted:>10,}")
total = sum(p.numel() for p in model.parameters())
assert total == fc1 + fc2 == 394_634
print(f"{'total':<6}{'':<20}{fc1 + fc2:>10,}{total:>10,}")
nbytes = total * 4
size = f"{nbytes:,} bytes = {nbytes / 1024:,.1f} KiB = {nbytes / 1024**2:.2f} MiB"
print(f"As float32: {total:,} x 4 bytes = {size}")

# %% compare
# The same class with MNIST's 784 inputs is the MNIST MLP. Only the first layer changes
# size.
mnist_total = sum(p.numel() for p in MLP(input_size=28 * 28).parameters())
assert mnist_total == 101_770
print(f"{'MNIST MLP (784 inputs)':<28}{mnist_total:>8,} parameters")
print(f"{'CIFAR-10 MLP (3072 inputs)':<28}{total:>8,} parameters")
ratio = total / mnist_total
print(f"The CIFAR-10 MLP has {ratio:.2f} times as many parameters as the MNIST MLP.")
share, wider = fc1 / total, 3072 / 784
print(
    f"Why: the first layer has inputs x 128 weights, and the input is {wider:.2f} times"
)
print(
    f"     larger (3072 vs 784); that layer holds {share:.1%} of the parameters, while"
)
print("     the second layer is 1,290 in both.")
