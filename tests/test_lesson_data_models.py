"""What the data and model snippets print, recorded afresh on the CPU with the real MNIST, states the true facts."""
from __future__ import annotations

import re

from conftest import all_output, cell_output


def test_every_recording_is_stamped_cpu(recorded):
    for name in ("image_tensors", "preprocessing", "mnist_samples", "mnist_mlp", "cifar_mlp", "dataloaders"):
        recording = recorded(name)
        assert recording["environment"]["device"] == "cpu"
        assert cell_output(recording, "setup").startswith("Device: cpu")


def test_image_tensors(recorded):
    rec = recorded("image_tensors")
    assert "Table shape: (1000, 5)" in cell_output(rec, "tabular")
    one = cell_output(rec, "one-image")
    assert "(1, 28, 28)" in one and "torch.float32" in one and "3,136 bytes" in one
    assert "3072 = 3 x 32 x 32" in cell_output(rec, "cifar-shape")
    assert "(64, 1, 28, 28)" in cell_output(rec, "batch") and "200,704 bytes = 196.0 KiB" in cell_output(rec, "batch")
    assert "(64, 784)" in cell_output(rec, "flatten") and "(64, 3072)" in cell_output(rec, "flatten")
    figure = next(c for c in rec["cells"] if c["name"] == "axes-figure")
    assert "batch (64, 1, 28, 28) -> (64, 784)" in figure["stdout"]     # the shapes came from the tensors
    assert len(figure["figures"]) == 1
    alt = figure["figure_descriptions"][0]
    assert "(N, C, H, W) = (64, 1, 28, 28)" in alt and "nn.Flatten(): (64, 1, 28, 28) -> (64, 784)" in alt


def test_preprocessing_finds_the_lessons_constants(recorded):
    rec = recorded("preprocessing")
    mean_std = cell_output(rec, "mean-std")
    assert re.search(r"mean = 0\.1307 .*0\.13066", mean_std) and re.search(r"std  = 0\.3081 .*0\.30810", mean_std)
    normalize = cell_output(rec, "normalize")
    assert "-0.4242" in normalize and "2.8215" in normalize
    after = next(line for line in normalize.splitlines() if line.startswith("after Normalize"))
    assert after.split()[2:] == ["-0.4242", "2.8215", "-0.0001", "1.0000"]
    histogram = next(c for c in rec["cells"] if c["name"] == "histogram")
    assert len(histogram["figures"]) == 1


def test_mnist_samples(recorded):
    rec = recorded("mnist_samples")
    load = cell_output(rec, "load")
    assert "60000" in load and "10000" in load
    counts = cell_output(rec, "class-counts")
    for number in ("5923", "6742", "5958", "6131", "5842", "5421", "5918", "6265", "5851", "5949", "1135", "892"):
        assert number in counts
    grid = next(c for c in rec["cells"] if c["name"] == "grid")
    assert grid["figures"] and "labels" in grid["stdout"]


def test_mnist_mlp_has_101770_parameters(recorded):
    rec = recorded("mnist_mlp")
    assert "Total params: 101,770" in cell_output(rec, "torchsummary")
    assert "Params size (MB): 0.39" in cell_output(rec, "torchsummary")
    torchinfo = cell_output(rec, "torchinfo")
    assert "Params size (MB): 0.41" in torchinfo and torchinfo.count("Total params") == 1   # printed once
    assert "Params: 407,080 bytes = 0.39 MiB = 0.41 MB" in torchinfo
    count = cell_output(rec, "count")
    assert "100,480" in count and "1,290" in count and "407,080 bytes = 397.5 KiB" in count
    diagram = next(c for c in rec["cells"] if c["name"] == "diagram")
    assert len(diagram["figures"]) == 1
    assert diagram["figure_descriptions"][0] == "The MNIST MLP, 784 → 128 → 10: parameters of each layer"
    assert "hidden 256: 203,530 parameters = 814,120 bytes" in cell_output(rec, "exercise-hidden-256")


def test_cifar_mlp_has_394634_parameters(recorded):
    rec = recorded("cifar_mlp")
    summaries = cell_output(rec, "exercise-summaries")
    assert "Total params: 394,634" in summaries and summaries.count("Total params") == 2
    assert "Params size (MB): 1.51" in summaries and "Params size (MB): 1.58" in summaries
    count = cell_output(rec, "count")
    assert "393,344" in count and "394,634" in count and "1,578,536 bytes" in count
    compare = cell_output(rec, "compare")
    assert "3.88x the parameters for 3.92x the inputs" in compare and "99.7%" in compare
    assert "float16: 789,268 bytes = 0.75 MiB" in cell_output(rec, "exercise-float16")


def test_dataloaders_and_batch_independence(recorded):
    rec = recorded("dataloaders")
    loaders = cell_output(rec, "loaders")
    assert re.search(r"train\s+60000\s+64\s+True\s+938", loaders) and re.search(r"test\s+10000\s+1000\s+False\s+10", loaders)
    assert "937 batches of 64, then a last one of 32" in loaders
    batch = cell_output(rec, "one-batch")
    assert "(64, 1, 28, 28)" in batch and "200,704 bytes" in batch and "512 bytes" in batch
    independent = cell_output(rec, "any-batch-size")
    for shape in ("(1, 10)", "(64, 10)", "(1000, 10)"):
        assert shape in independent
    assert independent.count("101,770 parameters") == 3 and "layer1.weight: (128, 784)" in independent
    same = cell_output(rec, "same-answer")
    difference = float(re.search(r"Largest difference .*: ([0-9.e+-]+)", same).group(1))
    assert difference < 1e-5 and "the same within 1e-05" in same
    drop_last = cell_output(rec, "exercise-drop-last")
    assert "batch size  64: 937 batches, 32 images skipped" in drop_last
    assert "batch size 100: 600 batches, 0 images skipped" in drop_last
    assert "Warning" not in all_output(rec)
