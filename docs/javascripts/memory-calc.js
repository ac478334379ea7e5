// The memory calculator (docs/calculator.md): the bytes one step of an MLP needs, part by part.
// The same formulas, texts and messages as the Python reference tools/memory_calc.py (read its docstrings for the
// formulas); both are checked against tests/memory_calc_vectors.json. Every byte count is a BigInt, so big values
// stay exact; nothing here can produce NaN or Infinity. No dependencies; it does nothing on other pages.
(function () {
  "use strict";

  var ITEMSIZE = { float32: 4n, float16: 2n, bfloat16: 2n };
  var OPTIMIZERS = { sgd: "SGD", "sgd-momentum": "SGD with momentum", adam: "Adam" };
  var STATE_BUFFERS = { sgd: 0, "sgd-momentum": 1, adam: 2 };
  var LABEL_BYTES = 8n;
  var BLOCK = 512n;
  var MAX_SIZE = 1000000n, MIN_SIZES = 2, MAX_SIZES = 100, MAX_BATCH = 1000000n;
  var PARTS = ["parameters", "gradients", "optimizer_state", "batch", "saved_activations"];
  var ROWS = PARTS.concat(["total", "total_blocks"]);

  var LAYERS_EMPTY = "Enter the layer sizes, for example 784, 128, 10.";
  var LAYERS_TOO_FEW = "Give at least two sizes: the input size and the number of classes.";
  var LAYERS_TOO_MANY = "Give at most " + MAX_SIZES + " sizes.";
  var BATCH_EMPTY = "Enter a batch size, for example 64.";
  var BATCH_TOO_SMALL = "The batch size must be at least 1.";
  var BATCH_TOO_BIG = "The batch size can be at most " + group(MAX_BATCH) + ".";
  var BATCH_NOT_WHOLE = "The batch size must be a whole number written in digits, such as 64.";
  var SEPARATORS = /[ \t\r\n,]+/;
  var DIGITS = /^[0-9]+$/;
  var NEGATIVE = /^-[0-9]+$/;
  // What a Chinese input method types, read as the ASCII it stands for (tools/memory_calc.py's WIDE and
  // ascii_input): full-width digits, comma, minus, full stop and semicolon, the ideographic comma and space.
  var WIDE = { "\uFF0C": ",", "\u3001": ",", "\u3000": " ", "\uFF0D": "-", "\uFF0E": ".", "\uFF1B": ";" };
  function asciiInput(text) {
    return String(text).replace(/[\uFF10-\uFF19\uFF0C\u3001\u3000\uFF0D\uFF0E\uFF1B]/g, function (c) {
      var code = c.charCodeAt(0);
      return code >= 0xFF10 && code <= 0xFF19 ? String(code - 0xFF10) : WIDE[c];
    });
  }

  function layerNotWhole(i) { return "Layer sizes must be whole numbers written in digits; size " + i + " is not."; }
  function layerTooSmall(i) { return "Each layer size must be at least 1; size " + i + " is not."; }
  function layerTooBig(i) { return "Each layer size can be at most " + group(MAX_SIZE) + "; size " + i + " is bigger."; }

  // The Chinese edition (docs/calculator.zh.md, <html lang="zh">): the same messages, lines and details in Chinese.
  // The English ones above stay as they are: tools/memory_calc.py and the test vectors check them.
  function zh() { return /^zh/i.test((typeof document !== "undefined" && document.documentElement.lang) || ""); }
  var CHINESE = {
    layersEmpty: "请输入各层大小，例如 784, 128, 10。",
    layersTooFew: "至少要给出两个大小：输入大小和类别数。",
    layersTooMany: "最多给出 " + MAX_SIZES + " 个大小。",
    batchEmpty: "请输入批量大小，例如 64。",
    batchTooSmall: "批量大小至少为 1。",
    batchTooBig: "批量大小最多为 " + group(MAX_BATCH) + "。",
    batchNotWhole: "批量大小必须是用数字写成的整数，例如 64。",
    layerNotWhole: function (i) { return "各层大小必须是用数字写成的整数；第 " + i + " 个大小不是。"; },
    layerTooSmall: function (i) { return "每个层大小至少为 1；第 " + i + " 个大小不是。"; },
    layerTooBig: function (i) { return "每个层大小最多为 " + group(MAX_SIZE) + "；第 " + i + " 个大小超过了。"; },
    optimizers: { sgd: "SGD", "sgd-momentum": "带动量的 SGD", adam: "Adam" },
    noResult: "没有结果：",
    fixField: "没有结果：请修正上面标出的字段。",
    memoryFor: "一个步骤所需的显存："
  };
  function say(english, key) { return zh() ? CHINESE[key] : english; }

  // The layer-sizes field → an array of BigInt; throws an Error whose message is shown next to the field.
  function parseLayers(text) {
    var tokens = asciiInput(text).split(SEPARATORS).filter(function (t) { return t !== ""; });
    if (tokens.length === 0) throw new Error(say(LAYERS_EMPTY, "layersEmpty"));
    var sizes = [];
    for (var i = 0; i < tokens.length; i++) {
      var token = tokens[i], position = i + 1;
      if (NEGATIVE.test(token)) throw new Error(say(layerTooSmall, "layerTooSmall")(position));
      if (!DIGITS.test(token)) throw new Error(say(layerNotWhole, "layerNotWhole")(position));
      var size = BigInt(token);
      if (size < 1n) throw new Error(say(layerTooSmall, "layerTooSmall")(position));
      if (size > MAX_SIZE) throw new Error(say(layerTooBig, "layerTooBig")(position));
      sizes.push(size);
    }
    if (sizes.length < MIN_SIZES) throw new Error(say(LAYERS_TOO_FEW, "layersTooFew"));
    if (sizes.length > MAX_SIZES) throw new Error(say(LAYERS_TOO_MANY, "layersTooMany"));
    return sizes;
  }

  // The batch-size field → a BigInt; throws like parseLayers.
  function parseBatch(text) {
    var token = asciiInput(text).replace(/^[ \t\r\n]+|[ \t\r\n]+$/g, "");
    if (token === "") throw new Error(say(BATCH_EMPTY, "batchEmpty"));
    if (NEGATIVE.test(token)) throw new Error(say(BATCH_TOO_SMALL, "batchTooSmall"));
    if (!DIGITS.test(token)) throw new Error(say(BATCH_NOT_WHOLE, "batchNotWhole"));
    var batch = BigInt(token);
    if (batch < 1n) throw new Error(say(BATCH_TOO_SMALL, "batchTooSmall"));
    if (batch > MAX_BATCH) throw new Error(say(BATCH_TOO_BIG, "batchTooBig"));
    return batch;
  }

  // {part: [bytes of each tensor]}, as tools/memory_calc.estimate. Inputs already checked by the parsers.
  function estimate(layers, batch, dtype, optimizer, mode) {
    var s = ITEMSIZE[dtype], training = mode === "training";
    if (s === undefined || !(optimizer in OPTIMIZERS) || (mode !== "training" && mode !== "inference")) {
      throw new Error("unknown dtype, optimizer or mode");
    }
    var parameters = [];
    for (var i = 0; i + 1 < layers.length; i++) {
      parameters.push(layers[i] * layers[i + 1] * s, layers[i + 1] * s);        // weight, bias
    }
    var state = [];
    if (training) {
      parameters.forEach(function (p) { for (var k = 0; k < STATE_BUFFERS[optimizer]; k++) state.push(p); });
    }
    var saved = [];
    if (training) {
      layers.slice(1, -1).forEach(function (width) { saved.push(batch * width * s); });   // each ReLU output
      saved.push(batch * layers[layers.length - 1] * s, s);                       // log_softmax output, total weight
    }
    return {
      parameters: parameters,
      gradients: training ? parameters.slice() : [],
      optimizer_state: state,
      batch: [batch * layers[0] * s, batch * LABEL_BYTES],                       // images, int64 labels
      saved_activations: saved
    };
  }

  function sum(list) { return list.reduce(function (a, b) { return a + b; }, 0n); }
  function max(list) { return list.reduce(function (a, b) { return b > a ? b : a; }); }
  function blocks(n) { return n <= 0n ? 0n : ((n + BLOCK - 1n) / BLOCK) * BLOCK; }

  function group(n) {
    return BigInt(n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }
  // n / divisor with `decimals` decimals, rounded half up, exactly (BigInt), with thousands separators.
  function fixed(n, divisor, decimals) {
    var scale = 10n ** BigInt(decimals);
    var q = (2n * n * scale + divisor) / (2n * divisor);
    var frac = (q % scale).toString();
    while (frac.length < decimals) frac = "0" + frac;
    return group(q / scale) + (decimals ? "." + frac : "");
  }
  function kib(n) { return fixed(n, 1024n, 2); }
  function mib(n) { return fixed(n, 1048576n, 3); }
  function count(n, noun) { return group(n) + " " + noun + (BigInt(n) === 1n ? "" : "s"); }

  function details(layers, batch, dtype, optimizer, mode, parts) {
    if (zh()) return detailsZh(layers, batch, dtype, optimizer, mode, parts);
    var s = ITEMSIZE[dtype], b = group(batch), training = mode === "training";
    var nParams = parts.parameters.length;
    var values = sum(parts.parameters) / s;
    var hidden = layers.slice(1, -1);
    var state, saved;
    if (!training) state = "none in inference: no optimizer step";
    else if (optimizer === "sgd") state = "plain SGD keeps no state";
    else if (optimizer === "sgd-momentum") state = "1 momentum buffer per parameter tensor: " + count(nParams, "tensor");
    else state = "2 buffers (exp_avg, exp_avg_sq) per parameter tensor: " + count(2 * nParams, "tensor") +
      "; the step counters are not counted";
    var logsoftmax = "log_softmax output " + b + " × " + group(layers[layers.length - 1]) + " values";
    if (!training && hidden.length > 0) saved = "none saved for backward. Not counted: at the forward pass's peak " +
      "a layer's output and its ReLU output are alive together, 2 × " + b + " × " + group(max(hidden)) + " values × " +
      s + " bytes";
    else if (!training) saved = "none saved for backward. Not counted: the forward pass's output, " + b + " × " +
      group(layers[layers.length - 1]) + " values × " + s + " bytes";
    else if (hidden.length === 0) saved = logsoftmax + " × " + s + " bytes + a " + s + "-byte total weight";
    else {
      var relu = hidden.length === 1 ? "ReLU output " + b + " × " + group(hidden[0]) + " values"
        : "ReLU outputs of " + hidden.length + " hidden layers " + b + " × " + group(sum(hidden)) + " values";
      saved = relu + " + " + logsoftmax + ", × " + s + " bytes each, + a " + s + "-byte total weight";
    }
    var tensors = PARTS.reduce(function (a, p) { return a + parts[p].length; }, 0);
    return {
      parameters: group(values) + " values × " + s + " bytes (" + dtype + "), in " + count(nParams, "tensor"),
      gradients: training ? "one per parameter, the same size: " + count(nParams, "tensor")
        : "none in inference: no backward pass",
      optimizer_state: state,
      batch: b + " images × " + group(layers[0]) + " values × " + s + " bytes + " + b + " int64 labels × 8 bytes",
      saved_activations: saved,
      total: "the five parts added up",
      total_blocks: count(tensors, "tensor") + ", each rounded up to a multiple of 512 bytes"
    };
  }

  function detailsZh(layers, batch, dtype, optimizer, mode, parts) {
    var s = ITEMSIZE[dtype], b = group(batch), training = mode === "training";
    var nParams = parts.parameters.length;
    var values = sum(parts.parameters) / s;
    var hidden = layers.slice(1, -1);
    var state, saved;
    if (!training) state = "推理时没有：不做优化器更新";
    else if (optimizer === "sgd") state = "普通 SGD 不保留状态";
    else if (optimizer === "sgd-momentum") state = "每个参数张量 1 个动量缓冲区：共 " + group(nParams) + " 个张量";
    else state = "每个参数张量 2 个缓冲区（exp_avg、exp_avg_sq）：共 " + group(2 * nParams) + " 个张量；步数计数器不计入";
    var logsoftmax = "log_softmax 的输出 " + b + " × " + group(layers[layers.length - 1]) + " 个值";
    var each = "，每个值 " + s + " 字节";
    if (!training && hidden.length > 0) saved = "不为反向传播保存任何张量。未计入：前向传播到达峰值时，某一层的输出和它的 " +
      "ReLU 输出同时存在，共 2 × " + b + " × " + group(max(hidden)) + " 个值" + each;
    else if (!training) saved = "不为反向传播保存任何张量。未计入：前向传播的输出，" + b + " × " +
      group(layers[layers.length - 1]) + " 个值" + each;
    else if (hidden.length === 0) saved = logsoftmax + each + "；另有损失的总权重 " + s + " 字节";
    else {
      var relu = hidden.length === 1 ? "ReLU 的输出 " + b + " × " + group(hidden[0]) + " 个值"
        : hidden.length + " 个隐藏层的 ReLU 输出 " + b + " × " + group(sum(hidden)) + " 个值";
      saved = relu + "、" + logsoftmax + each + "；另有损失的总权重 " + s + " 字节";
    }
    var tensors = PARTS.reduce(function (a, p) { return a + parts[p].length; }, 0);
    return {
      parameters: "共 " + group(values) + " 个值，每个 " + s + " 字节（" + dtype + "），分布在 " + group(nParams) + " 个张量中",
      gradients: training ? "每个参数张量一个，大小相同：共 " + group(nParams) + " 个张量" : "推理时没有：不做反向传播",
      optimizer_state: state,
      batch: b + " 张图像 × " + group(layers[0]) + " 个值，每个 " + s + " 字节；" + b + " 个 int64 标签，每个 8 字节",
      saved_activations: saved,
      total: "五个部分相加",
      total_blocks: group(tensors) + " 个张量，每个都向上取整到 512 字节的倍数"
    };
  }

  function describe(layers, batch, dtype, optimizer, mode) {
    if (zh()) {
      return (mode === "training" ? "训练，" + CHINESE.optimizers[optimizer] : "推理") + "，" + dtype + "，各层 " +
        layers.join("-") + "，批量 " + group(batch);
    }
    var what = mode === "training" ? "training, " + OPTIMIZERS[optimizer] : "inference";
    return what + ", " + dtype + ", layers " + layers.join("-") + ", batch " + group(batch);
  }

  // What the page shows, as tools/memory_calc.report: {rows: {row: {bytes, text, kib, mib, detail}}, summary}.
  function report(layers, batch, dtype, optimizer, mode) {
    var parts = estimate(layers, batch, dtype, optimizer, mode);
    var amounts = {}, all = [];
    PARTS.forEach(function (p) { amounts[p] = sum(parts[p]); all = all.concat(parts[p]); });
    amounts.total = sum(all);
    amounts.total_blocks = sum(all.map(blocks));
    var text = details(layers, batch, dtype, optimizer, mode, parts);
    var rows = {};
    ROWS.forEach(function (row) {
      var n = amounts[row];
      rows[row] = { bytes: n, text: group(n), kib: kib(n), mib: mib(n), detail: text[row] };
    });
    var said = describe(layers, batch, dtype, optimizer, mode);
    if (zh()) {
      return { rows: rows, summary: said + "：总计 " + rows.total.text + " 字节（" + rows.total.mib + " MiB）；按 512 字节的块计 " +
        rows.total_blocks.text + " 字节（" + rows.total_blocks.mib + " MiB）。" };
    }
    var summary = said.charAt(0).toUpperCase() + said.slice(1) + ": total " + rows.total.text + " bytes (" +
      rows.total.mib + " MiB); in 512-byte blocks " + rows.total_blocks.text + " bytes (" + rows.total_blocks.mib +
      " MiB).";
    return { rows: rows, summary: summary };
  }

  // --- The page ---------------------------------------------------------------------------------------------------

  function setError(input, box, message) {
    var hint = input.getAttribute("data-hint");
    box.textContent = message || "";
    box.hidden = !message;
    if (message) {
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", box.id + " " + hint);
    } else {
      input.removeAttribute("aria-invalid");
      input.setAttribute("aria-describedby", hint);
    }
  }

  function init(form) {
    if (form.getAttribute("data-ready") === "yes") return;
    form.setAttribute("data-ready", "yes");
    var $ = function (id) { return document.getElementById(id); };
    var layersInput = $("calc-layers"), batchInput = $("calc-batch");
    var dtypeSelect = $("calc-dtype"), optimizerSelect = $("calc-optimizer");
    var status = $("calc-status"), inputs = $("calc-inputs"), table = $("calc-results");
    var announceTimer = null;

    function mode() {
      var checked = form.querySelector("input[name='calc-mode']:checked");
      return checked ? checked.value : "training";
    }

    // The live region speaks once typing in a text field pauses, not at every key; a choice is said at once.
    function announce(text, now) {
      clearTimeout(announceTimer);
      if (now) status.textContent = text;
      else announceTimer = setTimeout(function () { status.textContent = text; }, 400);
    }

    function update(event) {
      var now = !event || event.type !== "input" || event.target.type !== "text";
      var layers = null, batch = null, first = null;
      try { layers = parseLayers(layersInput.value); setError(layersInput, $("calc-layers-error"), ""); }
      catch (e) { setError(layersInput, $("calc-layers-error"), e.message); first = first || e.message; }
      try { batch = parseBatch(batchInput.value); setError(batchInput, $("calc-batch-error"), ""); }
      catch (e) { setError(batchInput, $("calc-batch-error"), e.message); first = first || e.message; }
      var training = mode() === "training";
      optimizerSelect.disabled = !training;
      table.classList.toggle("calc-stale", first !== null);
      if (first !== null) {
        ROWS.forEach(function (row) {
          var tr = table.querySelector("tr[data-row='" + row + "']");
          ["bytes", "kib", "mib"].forEach(function (cell) { tr.querySelector(".calc-" + cell).textContent = "–"; });
          tr.querySelector(".calc-detail").textContent = "";
        });
        inputs.textContent = say("No result: fix the field marked above.", "fixField");
        announce(say("No result: ", "noResult") + first, now);
        return;
      }
      var shown = report(layers, batch, dtypeSelect.value, optimizerSelect.value, mode());
      ROWS.forEach(function (row) {
        var tr = table.querySelector("tr[data-row='" + row + "']"), cells = shown.rows[row];
        tr.querySelector(".calc-bytes").textContent = cells.text;
        tr.querySelector(".calc-kib").textContent = cells.kib;
        tr.querySelector(".calc-mib").textContent = cells.mib;
        tr.querySelector(".calc-detail").textContent = cells.detail;
      });
      var said = describe(layers, batch, dtypeSelect.value, optimizerSelect.value, mode());
      inputs.textContent = say("Memory for one step: ", "memoryFor") + said;
      announce(shown.summary, now);
    }

    form.addEventListener("submit", function (event) { event.preventDefault(); update(null); });
    form.addEventListener("input", update);
    form.addEventListener("change", update);
    Array.prototype.forEach.call(form.querySelectorAll("[data-calc-preset]"), function (button) {
      button.addEventListener("click", function () {
        layersInput.value = button.getAttribute("data-calc-preset");
        update(null);
      });
    });
    update(null);
  }

  function start() {
    var form = document.getElementById("calc-form");
    if (form) init(form);
  }

  window.memoryCalc = {
    parseLayers: parseLayers, parseBatch: parseBatch, estimate: estimate, report: report, describe: describe,
    group: group, fixed: fixed, blocks: blocks
  };
  if (typeof document$ !== "undefined" && document$.subscribe) document$.subscribe(start);   // Material's page event
  else if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
