"""Printed conclusions follow the numbers (issue 16, item 2).

Every sentence a snippet prints after a measurement that draws a conclusion from it (most of the bytes are the
batch, Adam's state outweighs the activations, the gradients are too large, both peaks are at one event, ...) is
chosen by that measurement in a small function of the snippet. These tests load only those functions (and the
constants they read) from the snippet's source, drive every branch with chosen numbers, and assert the sentence for
each: a sentence printed for numbers that contradict it fails here. Then, for each snippet, the committed CPU
recording is read back: the sentence it printed is the one its function gives for the numbers printed beside it.
"""
from __future__ import annotations

import ast
import itertools
import json
import re
from collections import namedtuple
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = ROOT / "snippets"
RECORDINGS = ROOT / "docs" / "outputs" / "cpu"
MiB = 2**20


def load(snippet: str, *names: str, **env) -> dict:
    """The snippet's top-level functions and assignments that define any of ``names``, executed in a namespace of
    ``env``: the verdict functions, without running a measurement or loading MNIST."""
    path = SNIPPETS / f"{snippet}.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    wanted, found = [], set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            wanted.append(node)
            found.add(node.name)
        elif isinstance(node, ast.Assign):
            targets = {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
            if targets & set(names):
                wanted.append(node)
                found |= targets & set(names)
    assert found == set(names), f"{snippet}.py does not define {set(names) - found}"
    namespace = dict(env)
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(path), "exec"), namespace)
    return namespace


def prose(text: str) -> str:
    return " ".join(text.split())


def recorded(snippet: str) -> dict[str, str]:
    """{cell: stdout} of the committed CPU recording."""
    recording = json.loads((RECORDINGS / f"{snippet}.json").read_text(encoding="utf-8"))
    return {cell["name"]: cell["stdout"] for cell in recording["cells"]}


def number(text: str) -> int:
    return int(text.replace(",", ""))


# --- inference_memory: the verdict on evaluating the test batch of 1000 -------------------------------------------

@pytest.fixture(scope="module")
def inference():
    return load("inference_memory", "why_fine")


def test_most_of_the_evaluation_peak_is_the_batch_only_when_it_is(inference):
    why = inference["why_fine"]
    assert why(0, 4_575_080, 3_144_000) == (             # the CPU recording: 69% of the peak
        "Evaluation kept nothing for backward; the batch is most of its peak (69%)")
    # Before: "Most of its ... bytes are the batch itself" was printed whatever the share.
    for peak in (7_000_000, 2 * 3_144_000):            # under half, and exactly half: not most
        assert "the batch is not most of its peak" in why(0, peak, 3_144_000)


def test_nothing_kept_for_backward_only_when_no_grad_saved_nothing(inference):
    said = inference["why_fine"](552_004, 4_575_080, 3_144_000)
    # Before: "under no_grad nothing is kept for backward" whatever autograd saved.
    assert "nothing" not in said
    assert said.startswith("Evaluation kept 552,004 bytes for backward")


def test_inference_memory_recording_prints_its_verdict(inference):
    out = recorded("inference_memory")
    saved = number(re.search(r"^torch\.no_grad\(\)\s+([\d,]+)", out["measure"], re.M)[1])
    peak = number(re.search(r"evaluating it \(no_grad\):\s+([\d,]+)", out["why-1000"])[1])
    batch = number(re.search(r"the batch itself:\s+([\d,]+)", out["why-1000"])[1])
    assert inference["why_fine"](saved, peak, batch) in out["why-1000"]


# --- grad_accumulation: the comparison (the model), the peaks, the unweighted gradients -----------------------------

@pytest.fixture(scope="module")
def accumulation():
    return load("grad_accumulation", "TOLERANCE", "agreement", "saving", "scaled", METHOD="counted tensor bytes")


def test_equal_is_said_only_within_the_tolerance(accumulation):
    agreement = accumulation["agreement"]
    assert agreement(2.6e-8) == "equal"
    assert agreement(accumulation["TOLERANCE"]) == "equal"
    assert agreement(2.0e-3) == "NOT equal"


def test_accumulation_saves_bytes_only_when_its_peak_is_lower(accumulation):
    saving = accumulation["saving"]
    assert saving(4_888_756, 1_832_116) == (
        "Accumulation: 0.37 of the full batch's peak, 3,056,640 bytes less (counted tensor bytes)")
    # Before: "-500 bytes less" for a higher peak.
    assert saving(1_000, 1_500) == "Accumulation: 1.50 of the full batch's peak, 500 bytes more (counted tensor bytes)"
    assert saving(1_000, 1_000) == "Accumulation: 1.00 of the full batch's peak, as many bytes (counted tensor bytes)"


def test_unweighted_gradients_are_too_large_only_when_they_are(accumulation):
    scaled = accumulation["scaled"]
    assert scaled(16.0, 16) == "Without weighting each loss by 1/16: gradients 16.00 times too large"
    # Before: "too large" whatever the ratio.
    assert scaled(0.5, 16) == "Without weighting each loss by 1/16: gradients 0.50 times too small"
    assert scaled(1.0001, 16) == "Without weighting each loss by 1/16: gradients as large as with it (1.00 times)"


def test_grad_accumulation_recording_prints_its_verdicts(accumulation):
    out = recorded("grad_accumulation")
    full, micro = (number(n) for n in re.findall(r"^(?:one batch of 1024|16 micro-batches of 64)\s+([\d,]+)",
                                                  out["peaks"], re.M))
    assert accumulation["saving"](full, micro) in out["peaks"]
    worst = float(re.search(r"Largest difference (\S+),", out["compare"])[1])
    assert f"{accumulation['agreement'](worst)} within the tolerance" in out["compare"]
    for rule in re.findall(r"^loss .*\s([\d.e+-]+)  ((?:NOT )?equal) within 1e-06$", out["uneven"], re.M):
        assert accumulation["agreement"](float(rule[0])) == rule[1]
    ratio = float(re.search(r"gradients ([\d.]+) times", out["exercise-no-weight"])[1])
    assert accumulation["scaled"](ratio, 16) in out["exercise-no-weight"]


# --- memory_measured: the biggest item, the allocator's columns -----------------------------------------------------

@pytest.fixture(scope="module")
def measured():
    return load("memory_measured", "biggest_items", "allocator_note")


CPU_PARTS = dict(params=407_080, grads=407_080, state=814_176, batch=3_219_456, activations=565_252, kept=40_964)


def test_the_biggest_item_and_what_outweighs_what_follow_the_parts(measured):
    biggest = measured["biggest_items"]
    assert biggest(1024, CPU_PARTS) == (
        "At batch 1024 the input batch (3,219,456 bytes) is the biggest item; Adam's state (814,176) outweighs all "
        "the activations autograd keeps (565,252).")
    # Before: the input batch was the biggest item and Adam's state outweighed the activations, whatever the parts.
    deep = dict(CPU_PARTS, activations=9_000_000)
    assert biggest(1024, deep) == (
        "At batch 1024 what autograd keeps for backward (9,000,000 bytes) is the biggest item; all the activations "
        "autograd keeps (9,000,000) outweigh Adam's state (814,176).")
    assert biggest(64, dict(CPU_PARTS, batch=201_216, activations=35_332)).startswith(
        "At batch 64 Adam's state (814,176 bytes) is the biggest item;")
    assert biggest(64, dict(CPU_PARTS, batch=1, activations=1, state=0)).startswith(
        "At batch 64 the parameters and the gradients tie for the biggest item (407,080 bytes);")
    assert biggest(8, dict(CPU_PARTS, params=5_000_000)).startswith(
        "At batch 8 the parameters (5,000,000 bytes) are the biggest item;")
    assert biggest(1024, dict(CPU_PARTS, activations=814_176)).endswith(
        "Adam's state and the activations autograd keeps weigh the same (814,176).")


def test_the_allocator_note_follows_its_columns(measured):
    note = measured["allocator_note"]
    rounded = [("model loaded", 407_080, 407_552, 407_552, 2 * MiB), ("forward", 646_192, 647_168, 1_159_168, 2 * MiB)]
    assert note(rounded) == (
        "On CUDA 'allocated' is above 'counted' because the allocator rounds every tensor up to a multiple of 512 "
        "bytes; 'peak' is higher still because of temporaries, such as the layer1 output before ReLU (freed as soon "
        "as ReLU has run) and the buffers Adam's step uses while it updates.")
    # Before: the same two reasons whatever the columns said.
    same = [("model loaded", 407_080, 407_080, 407_080, 2 * MiB)]
    assert note(same) == ("On CUDA 'allocated' equals 'counted' at every phase; 'peak' is never above 'allocated': "
                          "no temporary was seen.")
    below = [("forward", 646_192, 600_000, 700_000, 2 * MiB)]
    assert note(below).startswith("On CUDA 'allocated' is below 'counted' at some phase; 'peak' is higher still")


def test_memory_measured_recording_prints_its_verdict(measured):
    out = recorded("memory_measured")
    found = re.search(r"^Adam +1024 +([\d,]+) +([\d,]+) +([\d,]+) +([\d,]+) +([\d,]+) +([\d,]+)$", out["summary"], re.M)
    parts = dict(zip(("params", "grads", "state", "batch", "activations", "kept"), map(number, found.groups())))
    assert prose(measured["biggest_items"](1024, parts)) in prose(out["summary"])


# --- memory_timeline: what each event did -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def timeline():
    return load("memory_timeline", "history_text")


def test_step_2_reuses_the_cached_blocks_only_without_a_new_segment(timeline):
    said = timeline["history_text"]
    assert said("Adam", [(0, 0), (40, 3), (70, 3)]) == (
        "Adam: the allocator served 40 tensor allocations from the model's creation to the end of step 1 and 30 in "
        "step 2; it asked CUDA for new memory (a cudaMalloc'd segment) 3 times, then 0 times: step 2 reuses the "
        "cached blocks")
    assert said("Adam", [(0, 0), (40, 3), (70, 4)]).endswith("3 times, then 1 times")


def test_memory_timeline_recording_prints_its_verdict():
    """The one verdict the timeline prints names Adam's highest row of the table above it."""
    out = recorded("memory_timeline")
    rows = dict((event, number(adam)) for event, _, adam in
                re.findall(r"^(\S.*?)\s+([\d,]+)\s+([\d,]+)$", out["timeline"], re.M))
    event = max(rows, key=rows.get)
    assert (f"Adam's highest point: {rows[event]:,} bytes at '{event}'. That is the peak memory of a training "
            f"step (counted tensor bytes).") in prose(out["timeline"])


# --- memory_leak: what the tensor sum keeps, what training keeps ----------------------------------------------------

@pytest.fixture(scope="module")
def leak():
    return load("memory_leak", "kept_text", "training_text", itertools=itertools)


def test_each_step_keeps_its_batch_only_when_memory_grows_by_a_batch(leak):
    said = leak["kept_text"]
    grows = [3_696_008 + 3_696_004 * k for k in range(10)]
    assert said(grows, 3_144_000) == "Each step kept at least its batch (3,144,000 bytes of images and labels)"
    # Before: "each step keeps its batch" however little memory grew.
    assert said([3_696_008, 3_700_000, 3_800_000], 3_144_000) == (
        "Memory grew by less than a batch (3,144,000 bytes) in some step")


def test_backward_freed_the_saved_tensors_only_when_memory_did_not_grow_by_a_batch_a_step(leak):
    said = leak["training_text"]
    assert said(20, 0, 8, 50_688) == "Saved tensors freed (steps 2-20: +0 bytes); the graph: +8 nodes a step"
    # Before: "has already freed each step's saved tensors" whatever the growth, "but the graph grew" by 0 nodes too.
    assert said(20, 18 * 50_688, 8, 50_688) == (
        "Tensors of each step kept (steps 2-20: +912,384 bytes); the graph: +8 nodes a step")
    assert said(20, 0, 0, 50_688) == "Saved tensors freed (steps 2-20: +0 bytes); the graph did not grow"
    for args in ((20, 0, 8, 50_688), (20, 18 * 50_688, 8, 50_688)):
        assert len(said(*args)) <= 88                                     # a one-line verdict


def test_memory_leak_recording_prints_its_verdicts(leak):
    out = recorded("memory_leak")
    grows = [number(a) for a, _ in re.findall(r"^\s+\d+\s+([\d,]+)\s+([\d,]+)$", out["item"], re.M)]
    batch = number(re.search(r"kept at least its batch \(([\d,]+) bytes", prose(out["item"]))[1])
    assert prose(leak["kept_text"](grows, batch)) in prose(out["item"])
    steps = re.findall(r"^training step\s+(\d+):\s+([\d,]+) bytes .*?(\d+) graph nodes$", out["training"], re.M)
    (_, second, nodes2), (last, final, nodes_last) = steps[1], steps[-1]
    last = int(last)
    growth, nodes = number(final) - number(second), (int(nodes_last) - int(nodes2)) / (last - 2)
    assert prose(leak["training_text"](last, growth, nodes, 64 * (784 * 4 + 8))) in prose(out["training"])


# --- batch_size_search: the fitted line's fixed part and its events (CPU) --------------------------------------------

Trial = namedtuple("Trial", "batch fits peak event")


@pytest.fixture(scope="module")
def search():
    return load("batch_size_search", "SCALARS", "fixed_text", "events_text")


def test_the_fixed_part_is_small_scalars_only_when_it_is(search):
    said = search["fixed_text"]
    assert said(1_221_264.0, 407_080) == (
        "CPU: of the fixed part, 407,080 bytes are the parameters and 814,160 Adam's two moment buffers; 24 bytes "
        "are small scalars (Adam's step counters, the loss, its total weight)")
    # Before: a line through two peaks at the optimizer step (the gradients still there) gave "407,100 bytes are
    # small scalars".
    assert said(1_628_340.0, 407_080) == (
        "CPU: the fixed part, 1,628,340 bytes, is not the parameters (407,080) and Adam's two moment buffers "
        "(814,160) with a few scalars: it differs from those two by +407,100 bytes")
    assert "differs from those two by -80 bytes" in said(1_221_160.0, 407_080)


TRIALS = [Trial(512, True, 3_258_548, "1: optimizer step"), Trial(1024, True, 5_046_928, "2: forward"),
          Trial(2048, True, 8_872_592, "2: forward"), Trial(34_816, True, 131_293_840, "2: forward"),
          Trial(35_840, False, 135_119_504, "2: forward"), Trial(35_328, True, 133_206_672, "2: forward")]
LINE = (3_736.0, 1_221_264.0, (34_816, 35_328))


def test_both_peaks_at_one_event_only_when_they_are(search):
    said = search["events_text"]
    assert said(TRIALS, LINE) == (
        "Both peaks are at '2: forward'. The line holds where the peak is at that event: in these trials from batch "
        "1,024 up; smaller batches peak at '1: optimizer step'")
    # Before: "Both peaks are at" the larger trial's event, whatever the smaller one's.
    mixed = (3_576.5, 1_427_380.0, (512, 1024))
    assert said(TRIALS, mixed) == ("The two peaks are at different events ('1: optimizer step' at 512, '2: forward' "
                                   "at 1,024): the line mixes two kinds of peak")
    off = [*TRIALS[:2], Trial(2048, True, 8_872_592 + 4_096, "2: forward"), *TRIALS[3:]]
    assert said(off, LINE) == "Both peaks are at '2: forward', but not every trial that peaks there lies on the line"


def test_batch_size_search_recording_prints_its_verdicts(search):
    table, out = recorded("batch_size_search")["search"], recorded("batch_size_search")["line"]
    trials = [Trial(number(b), why.startswith("fits"), number(p), re.search(r"peak at '(.*)'", why)[1])
              for b, p, why in re.findall(r"^\s+\d+\s+([\d,]+)\s+([\d,]+)\s+(.*)$", table, re.M)]
    found = re.search(r"line through the peaks at ([\d,]+) and ([\d,]+): ([\d,.]+) bytes per sample \+ ([\d,]+) "
                      r"bytes fixed", prose(out))
    b0, b1, per_sample, fixed = number(found[1]), number(found[2]), float(found[3].replace(",", "")), number(found[4])
    assert prose(search["fixed_text"](fixed, 407_080)) in prose(out)
    assert prose(search["events_text"](trials, (per_sample, fixed, (b0, b1)))) in prose(out)


# --- estimators: the units of their totals and what they count -------------------------------------------------------

@pytest.fixture(scope="module")
def estimators():
    return load("estimators", "MiB", "in_mib", "in_mb", "linear_outputs_doubled", "summary_text", "info_text",
                "outputs_text", "legend")


def test_mib_and_mb_only_when_the_printed_total_is_the_formula_in_them(estimators):
    summary, info = estimators["summary_text"], estimators["info_text"]
    assert summary(1.09, 1_145_384) == ("  its 'MB' is MiB: 1.09 MiB = 1,142,948 bytes (+/- 5,243: it prints 2 "
                                        "decimals);\n  by its formula exactly: 1,145,384 bytes = 1.0923 MiB")
    # Before: "its 'MB' is MiB" and "by its formula exactly" whatever torchsummary printed.
    assert summary(1.15, 1_145_384) == ("  its 'MB' is not this formula's MiB: it printed 1.15, the formula gives\n"
                                        "  1,145,384 bytes = 1.0923 MiB")
    assert info(0.68, 678_504) == "  its MB is 10^6 bytes: 0.678504 MB = 678,504 bytes"
    assert info(0.65, 678_504) == "  its MB is not 10^6 bytes of these parts: they add up to 678,504 bytes"


def test_torchinfo_counts_the_linear_outputs_doubled_only_when_its_total_is_that(estimators):
    said = estimators["outputs_text"]
    assert said(64, 70_656) == ("torchinfo's total_output_bytes at batch 64 = 2 x (64 x 128 + 64 x 10) x 4 = 70,656:\n"
                                "only the outputs of layers that have parameters (the two Linear layers), doubled")
    assert said(64, 100_352) == ("torchinfo's total_output_bytes at batch 64: 100,352, not\n2 x (64 x 128 + 64 x 10) x "
                                 "4 = 70,656:\nnot just the outputs of the two Linear layers, doubled")


def test_the_legend_gives_units_only_for_a_formula_that_held(estimators):
    legend = estimators["legend"]
    assert legend(True, True) == ("(bytes) torchsummary: exact bytes of its own formula (it prints MiB labelled 'MB', "
                                  "2 decimals); torchinfo: total_input + total_output_bytes + total_param_bytes (it "
                                  "prints 10^6-byte MB).")
    assert legend(False, False) == ("(bytes) torchsummary: exact bytes of the formula above; torchinfo: total_input + "
                                    "total_output_bytes + total_param_bytes.")


def test_estimators_recording_prints_its_verdicts(estimators):
    out = recorded("estimators")
    summary_ok = info_ok = True
    for batch, printed, exact in re.findall(r"torchsummary, batch (\d+):.*?Estimated Total Size \(MB\): ([\d.]+).*?"
                                            r"by its formula exactly: ([\d,]+) bytes", out["torchsummary-estimate"],
                                            re.S):
        assert estimators["summary_text"](float(printed), number(exact)) in out["torchsummary-estimate"]
        summary_ok &= estimators["in_mib"](float(printed), number(exact))
    info = out["torchinfo-estimate"]
    for batch, printed, total, outputs in re.findall(r"torchinfo, batch (\d+): Estimated Total Size \(MB\): ([\d.]+)\n"
                                                     r".*?= ([\d,]+) bytes.*?total_output_bytes ([\d,]+)", info, re.S):
        assert estimators["info_text"](float(printed), number(total)) in info
        info_ok &= estimators["in_mb"](float(printed), number(total))
        info_ok &= number(outputs) == estimators["linear_outputs_doubled"](int(batch))
    outputs64 = number(re.search(r"torchinfo, batch 64:.*?total_output_bytes ([\d,]+)", info, re.S)[1])
    assert estimators["outputs_text"](64, outputs64) in info
    assert summary_ok and info_ok
    assert prose(estimators["legend"](summary_ok, info_ok)) in prose(out["compare"])


# --- gpu_overhead: the first step's RSS, the allocator's rounding and workspace --------------------------------------

@pytest.fixture(scope="module")
def overhead():
    return load("gpu_overhead", "MiB", "step_text", "rounding_text", "workspace_text", "outside_text")


def test_the_rest_of_the_rss_growth_only_when_it_grew_by_more_than_the_tensors(overhead):
    said = overhead["step_text"]
    assert said(1_270_412, 171_409_408) == (
        "CPU: the tensors this step created hold 1,270,412 bytes (gradients, Adam's state, labels, logits, loss); "
        "the rest is code and buffers that backward and the optimizer use for the first time")
    # Before: "the rest is ..." even when the RSS grew by less than the tensors (there is no rest).
    assert said(1_270_412, 1_228_800) == (
        "CPU: the tensors this step created hold 1,270,412 bytes (gradients, Adam's state, labels, logits, loss), "
        "more than the RSS grew: part of them went into memory the process already held")


def test_cuda_sentences_follow_the_allocators_numbers(overhead):
    rounding, workspace, outside = overhead["rounding_text"], overhead["workspace_text"], overhead["outside_text"]
    assert rounding(512, 1024) == ("The caching allocator hands out blocks in multiples of 512 bytes: every tensor is "
                                   "rounded up.")
    # Before: "multiples of 512 bytes" whatever memory_allocated grew by.
    assert rounding(1, 513).startswith("Not the caching allocator's usual 512-byte blocks")
    assert workspace(32 * MiB).startswith("That is cuBLAS's workspace: 33,554,432 bytes = 32 MiB")
    assert workspace(0).startswith("No allocator jump")
    assert outside(2 * MiB).endswith("it grew by 2,097,152 bytes: cuBLAS's handle and its kernels, loaded into the "
                                     "context")
    # Before: "it grew by 0 bytes: cuBLAS's handle and its kernels".
    assert outside(0) == ("Outside PyTorch's allocator (nvidia-smi - reserved) it did not grow (+0 bytes, in "
                          "nvidia-smi's whole MiB)")


def test_gpu_overhead_recording_prints_its_verdict(overhead):
    text = prose(recorded("gpu_overhead")["training-step"])
    grown = number(re.search(r"bytes \(\+([\d,]+) bytes since the first matmul\)", text)[1])
    made = number(re.search(r"the tensors this step created hold ([\d,]+) bytes", text)[1])
    assert prose(overhead["step_text"](made, grown)) in text


# --- preprocessing: what Normalize gave the training set -------------------------------------------------------------

def test_mean_about_0_and_std_about_1_only_when_they_are():
    said = load("preprocessing", "ABOUT", "normalized_text")["normalized_text"]
    assert said(-0.0001, 1.0000) == ("After: mean about 0 and std about 1 (not exactly: 0.1307 and 0.3081 are "
                                     "rounded).")
    # Before: "mean about 0 and std about 1" whatever the whole training set gave.
    assert said(0.4, 1.2) == ("After: mean 0.4000 and std 1.2000, not about 0 and 1:\n0.1307 and 0.3081 are not "
                              "this data's mean and std.")
    assert said(0.0, 1.0) == "After: mean 0 and std 1, exactly."


def test_preprocessing_recording_prints_its_verdict():
    said = load("preprocessing", "ABOUT", "normalized_text")["normalized_text"]
    text = recorded("preprocessing")["normalize"]
    *_, mean, std = re.search(r"^after Normalize\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)$", text, re.M).groups()
    assert said(float(mean), float(std)) in text


# --- memory_arithmetic: the lesson's prose figures ---------------------------------------------------------------

def test_the_prose_figures_named_are_the_ones_the_table_finds_wrong():
    said = load("memory_arithmetic", "prose_text")["prose_text"]
    assert said([403, 403, 806, 806, 192]) == "Its prose figures (403, 806, 192 'KB') are neither KiB nor kB."
    # Before: "(403, 806, 192 'KB') are neither KiB nor kB" whatever the verdicts in the table.
    assert said([192]) == "Its prose figure (192 'KB') is neither KiB nor kB."
    assert said([]) == "Each of its prose figures is right as KiB or as kB."


def test_memory_arithmetic_recording_prints_its_verdict():
    said = load("memory_arithmetic", "prose_text")["prose_text"]
    text = recorded("memory_arithmetic")["lesson-vs-exact"]
    neither = [int(f) for f in re.findall(r"~(\d+) KB .* neither KiB nor kB$", text, re.M)]
    assert prose(said(neither)) in prose(text)


def test_sentences_printed_without_wrapping_fit_88_columns(accumulation, estimators):
    """The verdicts a snippet prints as they are (not through its wrapping say()) fit 88 columns in every branch."""
    normalized = load("preprocessing", "ABOUT", "normalized_text")["normalized_text"]
    printed = [accumulation["saving"](full, micro) for full, micro in
               ((4_888_756, 1_832_116), (1_832_116, 4_888_756), (4_888_756, 4_888_756))]
    printed += [accumulation["scaled"](ratio, 16) for ratio in (16.0, 0.06, 1.0)]
    printed += [estimators["summary_text"](total, 12_219_944) for total in (11.65, 99.99)]
    printed += [estimators["info_text"](total, 4_748_904) for total in (4.75, 99.99)]
    printed += [estimators["outputs_text"](64, counted) for counted in (70_656, 1_000_000_000)]
    printed += [normalized(mean, std) for mean, std in ((-0.0001, 1.0), (-0.1234, 1.2345), (0.0, 1.0))]
    for text in printed:
        assert all(len(line) <= 88 for line in text.splitlines()), text
