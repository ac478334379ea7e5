"""The memory calculator's reference: the bytes one training (or inference) step of an MLP needs, part by part.

Pure Python, no torch: the page ``docs/calculator.md`` runs the same formulas in ``docs/javascripts/memory-calc.js``,
and both are checked against the shared test vectors in ``tests/memory_calc_vectors.json``, which this module writes::

    python -m tools.memory_calc --write-vectors     # regenerate the vectors after changing a formula or a message
    python -m tools.memory_calc 784,128,10 --batch 1024 --optimizer adam

The model is the lesson's kind of MLP: ``Linear`` layers with bias between the given sizes, a ReLU after every
``Linear`` but the last, and ``cross_entropy`` on ``int64`` labels. ``[784, 128, 10]`` is the MNIST MLP,
``[3072, 128, 10]`` the CIFAR-10 one.

Units: every size is in **bytes**, as an exact ``int``. KiB and MiB are binary: 1 KiB = 1024 bytes, 1 MiB = 1024 KiB.

The five parts, with ``s`` the dtype's item size in bytes (float32 4, float16 and bfloat16 2; the dtype applies to
parameters, gradients, optimizer state, images and activations alike, as after ``model.to(dtype)``):

- **parameters**: each layer's weight ``n_in × n_out × s`` and bias ``n_out × s``;
- **gradients**: the same tensors again in training (``p.grad`` has the parameter's shape and dtype); 0 in inference;
- **optimizer state**: per parameter tensor, SGD 0 buffers, SGD with momentum 1 (``momentum_buffer``), Adam 2
  (``exp_avg``, ``exp_avg_sq``), each the parameter's size. Adam's ``step`` counters (one 4-byte float32 per
  parameter tensor, kept on the CPU unless Adam is ``capturable`` or ``fused``) are not counted. 0 in inference;
- **batch**: the images, ``batch × n_in × s``, and their labels, ``batch × 8`` (int64). Inference keeps the labels:
  the lesson's test loader hands them over with the images;
- **saved activations** (training only): what autograd keeps for backward that is new memory: for every hidden
  layer the ReLU output, ``batch × width × s`` (the pre-ReLU output is saved by nobody); the log_softmax output,
  ``batch × classes × s``; and the scalar total weight of ``nll_loss``, one element in the dtype (4 bytes in
  float32). The first layer's input is a view of the batch and is not counted again; every later layer's input is
  the ReLU output already counted; the weights autograd saves are the parameters. 0 in inference, where the page
  says what the total leaves out: the layer outputs alive while the forward pass runs (at its peak a hidden layer's
  output and its ReLU output, ``2 × batch × width × s``; chapter 6's ``no_grad`` peak is the total plus this).

The **total** adds the five parts. The **total in 512-byte blocks** rounds every tensor (each parameter, gradient
and state buffer, the images, the labels, each saved tensor) up to a multiple of 512 bytes, at least 512, as PyTorch's
CUDA caching allocator does, and adds those.

Bad input raises ``ValueError`` with the message the page shows next to its field (``parse_layers`` and
``parse_batch`` read the page's text fields; ``estimate`` and ``report`` check the values).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}                 # bytes per element
OPTIMIZERS = {"sgd": "SGD", "sgd-momentum": "SGD with momentum", "adam": "Adam"}
STATE_BUFFERS = {"sgd": 0, "sgd-momentum": 1, "adam": 2}               # buffers per parameter tensor
MODES = ("training", "inference")
LABEL_BYTES = 8                                                         # int64
BLOCK = 512                                                             # the CUDA caching allocator's block size
MAX_SIZE = 1_000_000                                                    # the largest layer size accepted
MIN_SIZES, MAX_SIZES = 2, 100                                           # input size ... number of classes
MAX_BATCH = 1_000_000
PARTS = ("parameters", "gradients", "optimizer_state", "batch", "saved_activations")
ROWS = (*PARTS, "total", "total_blocks")
VECTORS = Path(__file__).resolve().parent.parent / "tests" / "memory_calc_vectors.json"

# The messages shown next to a field. memory-calc.js has the same texts; the shared vectors hold both.
LAYERS_EMPTY = "Enter the layer sizes, for example 784, 128, 10."
LAYERS_TOO_FEW = "Give at least two sizes: the input size and the number of classes."
LAYERS_TOO_MANY = f"Give at most {MAX_SIZES} sizes."
BATCH_EMPTY = "Enter a batch size, for example 64."
BATCH_TOO_SMALL = "The batch size must be at least 1."
BATCH_TOO_BIG = f"The batch size can be at most {MAX_BATCH:,}."
BATCH_NOT_WHOLE = "The batch size must be a whole number written in digits, such as 64."

SEPARATORS = re.compile(r"[ \t\r\n,]+")          # exactly these characters, in Python and in JavaScript alike
# What a Chinese input method types, read as the ASCII it stands for (before anything else, in both languages):
# full-width digits, comma, minus, full stop and semicolon, the ideographic comma 、 and the ideographic space.
WIDE = {**{chr(0xFF10 + d): str(d) for d in range(10)}, "，": ",", "、": ",", "\u3000": " ", "－": "-", "．": ".",
        "；": ";"}
DIGITS = re.compile(r"[0-9]+")
NEGATIVE = re.compile(r"-[0-9]+")


def _layer_not_whole(position: int) -> str:
    return f"Layer sizes must be whole numbers written in digits; size {position} is not."


def _layer_too_small(position: int) -> str:
    return f"Each layer size must be at least 1; size {position} is not."


def _layer_too_big(position: int) -> str:
    return f"Each layer size can be at most {MAX_SIZE:,}; size {position} is bigger."


def ascii_input(text: str) -> str:
    """``text`` with what Chinese input methods type (``WIDE``: ７８４，１２８、１０ and the ideographic space)
    replaced by the ASCII it stands for; every other character is left as it is."""
    return "".join(WIDE.get(character, character) for character in text)


def parse_layers(text: str) -> list[int]:
    """The page's layer-sizes field → the sizes, e.g. ``"784, 128, 10"`` → ``[784, 128, 10]``.

    Sizes are separated by commas, spaces, tabs or line breaks (any run of them; leading zeros are allowed); what a
    Chinese input method types counts as the same (``ascii_input``: full-width digits and commas, 、, U+3000). Raises
    ``ValueError`` for an empty field, a token that is not digits (``12.5``, ``NaN``, ``1e15``, text), a size below 1
    or above ``MAX_SIZE``, and fewer than ``MIN_SIZES`` or more than ``MAX_SIZES`` sizes; the first problem wins.
    The message names the size by its position, never echoes the input (so "NaN" typed is never shown back).
    """
    tokens = [t for t in SEPARATORS.split(ascii_input(text)) if t]
    if not tokens:
        raise ValueError(LAYERS_EMPTY)
    sizes = []
    for position, token in enumerate(tokens, 1):
        if NEGATIVE.fullmatch(token):
            raise ValueError(_layer_too_small(position))
        if not DIGITS.fullmatch(token):
            raise ValueError(_layer_not_whole(position))
        size = int(token)
        if size < 1:
            raise ValueError(_layer_too_small(position))
        if size > MAX_SIZE:
            raise ValueError(_layer_too_big(position))
        sizes.append(size)
    if len(sizes) < MIN_SIZES:
        raise ValueError(LAYERS_TOO_FEW)
    if len(sizes) > MAX_SIZES:
        raise ValueError(LAYERS_TOO_MANY)
    return sizes


def parse_batch(text: str) -> int:
    """The page's batch-size field → the batch size (digits only, spaces around allowed). Raises ``ValueError``
    for an empty field, anything but digits, and a size below 1 or above ``MAX_BATCH``."""
    token = ascii_input(text).strip(" \t\r\n")
    if not token:
        raise ValueError(BATCH_EMPTY)
    if NEGATIVE.fullmatch(token):
        raise ValueError(BATCH_TOO_SMALL)
    if not DIGITS.fullmatch(token):
        raise ValueError(BATCH_NOT_WHOLE)
    batch = int(token)
    if batch < 1:
        raise ValueError(BATCH_TOO_SMALL)
    if batch > MAX_BATCH:
        raise ValueError(BATCH_TOO_BIG)
    return batch


def _whole(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an int, not {value!r}")
    return value


def check(layers, batch, dtype: str, optimizer: str, mode: str) -> None:
    """Raise ``ValueError`` unless the inputs are valid: 2 to 100 layer sizes, each an int from 1 to 1,000,000; a
    batch size, an int from 1 to 1,000,000; a dtype of ``ITEMSIZE``, an optimizer of ``OPTIMIZERS``, a mode of
    ``MODES``."""
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__len__"):
        raise ValueError(f"layers must be a list of ints, not {layers!r}")
    for position, size in enumerate(layers, 1):
        if not 1 <= _whole(size, f"layer size {position}") <= MAX_SIZE:
            raise ValueError(_layer_too_small(position) if size < 1 else _layer_too_big(position))
    if len(layers) < MIN_SIZES:
        raise ValueError(LAYERS_TOO_FEW)
    if len(layers) > MAX_SIZES:
        raise ValueError(LAYERS_TOO_MANY)
    if _whole(batch, "the batch size") < 1:
        raise ValueError(BATCH_TOO_SMALL)
    if batch > MAX_BATCH:
        raise ValueError(BATCH_TOO_BIG)
    if dtype not in ITEMSIZE:
        raise ValueError(f"dtype must be one of {', '.join(ITEMSIZE)}, not {dtype!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {optimizer!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")


def estimate(layers, batch: int, dtype: str = "float32", optimizer: str = "sgd",
             mode: str = "training") -> dict[str, list[int]]:
    """Every tensor of each part, in bytes: ``{part: [bytes of each tensor]}`` for the parts in ``PARTS``.

    ``estimate([784, 128, 10], 64)["parameters"]`` is ``[401408, 512, 5120, 40]`` (layer1.weight, layer1.bias,
    layer2.weight, layer2.bias); an empty list means the part has no tensor (0 bytes). In inference the optimizer
    is not used. Raises ``ValueError`` on bad input (see ``check``).
    """
    check(layers, batch, dtype, optimizer, mode)
    s = ITEMSIZE[dtype]
    training = mode == "training"
    parameters = []
    for n_in, n_out in zip(layers, layers[1:]):
        parameters += [n_in * n_out * s, n_out * s]                     # weight, bias
    hidden = layers[1:-1]
    return {
        "parameters": parameters,
        "gradients": list(parameters) if training else [],
        "optimizer_state": [p for p in parameters for _ in range(STATE_BUFFERS[optimizer])] if training else [],
        "batch": [batch * layers[0] * s, batch * LABEL_BYTES],          # images, int64 labels
        "saved_activations": ([batch * width * s for width in hidden]   # each ReLU output
                              + [batch * layers[-1] * s, s]             # log_softmax output, total weight
                              ) if training else [],
    }


def blocks(nbytes: int) -> int:
    """Bytes the CUDA caching allocator hands a tensor of ``nbytes`` bytes: a multiple of 512, at least 512 (0 for
    an empty tensor)."""
    if nbytes <= 0:
        return 0
    return -(-nbytes // BLOCK) * BLOCK


def totals(parts: dict[str, list[int]]) -> tuple[int, int]:
    """(the total in bytes, the total with every tensor rounded up to 512-byte blocks)."""
    tensors = [t for part in PARTS for t in parts[part]]
    return sum(tensors), sum(blocks(t) for t in tensors)


# --- Formatting: exact integer arithmetic, the same in memory-calc.js (BigInt) -------------------------------------

def group(n: int) -> str:
    """``1234567`` → ``"1,234,567"``."""
    return f"{n:,}"


def fixed(n: int, divisor: int, decimals: int) -> str:
    """``n / divisor`` with ``decimals`` decimals, rounded half up, exactly, with thousands separators:
    ``fixed(407080, 1024, 2)`` → ``"397.54"`` (KiB)."""
    scale = 10 ** decimals
    q = (2 * n * scale + divisor) // (2 * divisor)
    whole, frac = divmod(q, scale)
    return group(whole) + (f".{frac:0{decimals}d}" if decimals else "")


def kib(n: int) -> str:
    """Bytes as KiB (1024 bytes), 2 decimals, as chapter 3's recordings print them."""
    return fixed(n, 1024, 2)


def mib(n: int) -> str:
    """Bytes as MiB (1024 × 1024 bytes), 3 decimals, as chapter 3's recordings print them."""
    return fixed(n, 1024 * 1024, 3)


def _count(n: int, noun: str) -> str:
    return f"{group(n)} {noun}" + ("" if n == 1 else "s")


def _details(layers, batch, dtype, optimizer, mode, parts) -> dict[str, str]:
    s, b = ITEMSIZE[dtype], group(batch)
    training = mode == "training"
    n_params = len(parts["parameters"])
    values = sum(parts["parameters"]) // s
    hidden = layers[1:-1]
    if not training:
        state = "none in inference: no optimizer step"
    elif optimizer == "sgd":
        state = "plain SGD keeps no state"
    elif optimizer == "sgd-momentum":
        state = f"1 momentum buffer per parameter tensor: {_count(n_params, 'tensor')}"
    else:
        state = (f"2 buffers (exp_avg, exp_avg_sq) per parameter tensor: {_count(2 * n_params, 'tensor')}; "
                 "the step counters are not counted")
    logsoftmax = f"log_softmax output {b} × {group(layers[-1])} values"
    if not training and hidden:
        saved = (f"none saved for backward. Not counted: at the forward pass's peak a layer's output and its "
                 f"ReLU output are alive together, 2 × {b} × {group(max(hidden))} values × {s} bytes")
    elif not training:
        saved = (f"none saved for backward. Not counted: the forward pass's output, {b} × {group(layers[-1])} "
                 f"values × {s} bytes")
    elif not hidden:
        saved = f"{logsoftmax} × {s} bytes + a {s}-byte total weight"
    else:
        relu = (f"ReLU output {b} × {group(hidden[0])} values" if len(hidden) == 1 else
                f"ReLU outputs of {len(hidden)} hidden layers {b} × {group(sum(hidden))} values")
        saved = f"{relu} + {logsoftmax}, × {s} bytes each, + a {s}-byte total weight"
    return {
        "parameters": f"{group(values)} values × {s} bytes ({dtype}), in {_count(n_params, 'tensor')}",
        "gradients": (f"one per parameter, the same size: {_count(n_params, 'tensor')}" if training
                      else "none in inference: no backward pass"),
        "optimizer_state": state,
        "batch": f"{b} images × {group(layers[0])} values × {s} bytes + {b} int64 labels × 8 bytes",
        "saved_activations": saved,
        "total": "the five parts added up",
        "total_blocks": (f"{_count(sum(len(parts[p]) for p in PARTS), 'tensor')}, "
                         "each rounded up to a multiple of 512 bytes"),
    }


def describe(layers, batch: int, dtype: str, optimizer: str, mode: str) -> str:
    """The inputs in words: ``"training, Adam, float32, layers 784-128-10, batch 64"``."""
    what = f"training, {OPTIMIZERS[optimizer]}" if mode == "training" else "inference"
    return f"{what}, {dtype}, layers {'-'.join(str(n) for n in layers)}, batch {group(batch)}"


def report(layers, batch: int, dtype: str = "float32", optimizer: str = "sgd", mode: str = "training") -> dict:
    """What the page shows: for each row of ``ROWS`` its bytes (int) and the texts of its cells (bytes with
    thousands separators, KiB, MiB, and a line saying how it is counted), and the sentence for the live region.
    Raises ``ValueError`` on bad input."""
    parts = estimate(layers, batch, dtype, optimizer, mode)
    total, total_blocks = totals(parts)
    amounts = {**{p: sum(parts[p]) for p in PARTS}, "total": total, "total_blocks": total_blocks}
    details = _details(layers, batch, dtype, optimizer, mode, parts)
    rows = {row: {"bytes": amounts[row], "text": group(amounts[row]), "kib": kib(amounts[row]),
                  "mib": mib(amounts[row]), "detail": details[row]} for row in ROWS}
    said = describe(layers, batch, dtype, optimizer, mode)
    summary = (f"{said[0].upper() + said[1:]}: total {group(total)} bytes "
               f"({mib(total)} MiB); in 512-byte blocks {group(total_blocks)} bytes ({mib(total_blocks)} MiB).")
    return {"rows": rows, "summary": summary}


# --- The shared test vectors ----------------------------------------------------------------------------------------

def _cases() -> list[dict]:
    cases = []
    for layers in ("784, 128, 10", "3072, 128, 10"):
        for batch in ("64", "1024"):
            for dtype in ITEMSIZE:
                for mode in MODES:
                    for optimizer in OPTIMIZERS:
                        cases.append(dict(layers=layers, batch=batch, dtype=dtype, optimizer=optimizer, mode=mode))
    cases += [
        dict(layers="1, 1", batch="1", dtype="float32", optimizer="adam", mode="training"),       # all < 512 bytes
        dict(layers="784 10", batch="1000", dtype="float32", optimizer="sgd", mode="training"),   # no hidden layer
        dict(layers="784, 512, 256, 128, 10", batch="256", dtype="bfloat16", optimizer="adam", mode="training"),
        dict(layers="  0784 ,128,,10,  ", batch=" 64 ", dtype="float32", optimizer="sgd-momentum",
             mode="training"),                                                              # lenient separators
        dict(layers="3072\n4096\t4096, 10", batch="1", dtype="float16", optimizer="sgd", mode="inference"),
        # what Chinese input methods type: full-width digits and commas, 、, the ideographic space, mixed with ASCII
        dict(layers="７８４，１２８，１０", batch="６４", dtype="float32", optimizer="adam", mode="training"),
        dict(layers="784、128、10", batch="\u3000６４\u3000", dtype="float32", optimizer="sgd", mode="training"),
        dict(layers="3072\u3000128\u300010", batch="1024", dtype="float16", optimizer="sgd-momentum",
             mode="training"),
        dict(layers="７８４, 128，10、", batch="１０２４", dtype="bfloat16", optimizer="adam", mode="inference"),
        dict(layers=", ".join(["1000000"] * MAX_SIZES), batch="1000000", dtype="float32", optimizer="adam",
             mode="training"),                                                              # the largest input
    ]
    return cases


ERRORS = [("layers", text) for text in (
    "", "   ", ",", "0", "784, 0, 10", "784, -128, 10", "-5", "784, 12.5, 10", "12.5", "NaN", "784, NaN, 10",
    "abc", "784, 128, ten", "1e15", "784, 1e15, 10", "1000000000000000", "784, 1000001, 10", "Infinity",
    "784; 128; 10", "784", "0x10, 10", "+5, 10", ", ".join(["10"] * (MAX_SIZES + 1)),
    "123456789012345678901234567890, 10", "７８４；１２８；１０", "七百八十四，１０", "７８４，１２．５，１０",
    "７８４，－１２８，１０", "７８４")] + [("batch", text) for text in (
    "", "  ", "0", "-64", "6.4", "NaN", "abc", "1e15", "1000000000000000", "1000001", "Infinity", "64 128", "1,024",
    "-0", "６．４", "－６４", "１，０２４", "六十四", "\u3000")]


def vectors() -> dict:
    """The shared test vectors: valid inputs (as the page's fields hold them) with everything the page shows, and
    bad inputs with the message shown next to the field."""
    cases = []
    for case in _cases():
        layers, batch = parse_layers(case["layers"]), parse_batch(case["batch"])
        cases.append({"input": case, "expected": report(layers, batch, case["dtype"], case["optimizer"],
                                                        case["mode"])})
    errors = []
    for field, text in ERRORS:
        try:
            (parse_layers if field == "layers" else parse_batch)(text)
        except ValueError as error:
            errors.append({"field": field, "input": text, "message": str(error)})
        else:
            raise AssertionError(f"{field} {text!r} should be rejected")
    return {"about": "Generated by `python -m tools.memory_calc --write-vectors` from tools/memory_calc.py; "
                     "tests/test_memory_calc.py and tests/test_calculator_browser.py check the Python reference "
                     "and docs/javascripts/memory-calc.js against it. Bytes are exact ints.",
            "limits": {"max_size": MAX_SIZE, "min_sizes": MIN_SIZES, "max_sizes": MAX_SIZES, "max_batch": MAX_BATCH},
            "cases": cases, "errors": errors}


def vectors_text() -> str:
    return json.dumps(vectors(), indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.memory_calc", description=__doc__.split("\n\n")[0])
    parser.add_argument("layers", nargs="?", default="784, 128, 10", help="layer sizes, e.g. 784,128,10")
    parser.add_argument("--batch", default="64")
    parser.add_argument("--dtype", default="float32", choices=list(ITEMSIZE))
    parser.add_argument("--optimizer", default="sgd", choices=list(OPTIMIZERS))
    parser.add_argument("--mode", default="training", choices=list(MODES))
    parser.add_argument("--write-vectors", action="store_true", help=f"write {VECTORS.name} and exit")
    args = parser.parse_args(argv)
    if args.write_vectors:
        VECTORS.write_text(vectors_text(), encoding="utf-8")
        print(f"wrote {VECTORS}")
        return 0
    try:
        shown = report(parse_layers(args.layers), parse_batch(args.batch), args.dtype, args.optimizer, args.mode)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    for row, cells in shown["rows"].items():
        print(f"{row:18} {cells['text']:>22} bytes {cells['kib']:>20} KiB {cells['mib']:>16} MiB  {cells['detail']}")
    print(shown["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
