// The Florence-2 page: pick an image and a task, run it through POST /v1/predict, draw the result.
// Plain script, no build step and no third-party code. All server text is inserted as text, never HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const MAX_SIDE = 640; // longest side of the drawn image, in CSS pixels
  const OPTIONAL_FIELDS = ["num_beams", "max_new_tokens", "score_threshold", "nms_iou"];

  const state = {
    blob: null, // the image as sent to the server
    name: "",
    bitmap: null, // decoded by the browser (EXIF-rotated, as the server reads it); null if it cannot
    width: 0,
    height: 0,
    tasks: {}, // token -> {token, input, description, ...}
    result: null, // inner result of the task that ran
    region: null, // [x0, y0, x1, y1] in image pixels
    drag: null,
  };

  // -- server ---------------------------------------------------------------------------------

  function authHeaders() {
    const key = $("api-key").value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  function apiError(status, body, statusText = "") {
    const detail = body && body.detail ? body.detail : statusText;
    const error = new Error(`${status} ${body && body.error ? body.error : ""}: ${detail}`);
    error.status = status;
    return error;
  }

  async function api(path, options = {}, onPiece = null) {
    const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
    const type = response.headers.get("content-type") || "";
    if (response.ok && onPiece && type.includes("text/event-stream")) return readEvents(response, onPiece);
    const body = type.includes("json") ? await response.json() : await response.text();
    if (!response.ok) throw apiError(response.status, body, response.statusText);
    return body;
  }

  // Server-sent events of a streamed prediction: 'piece' events ({task, text}) go to onPiece as they
  // arrive; the 'result' event is the usual response; an 'error' event is thrown.
  async function readEvents(response, onPiece) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let result = null;
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        const payload = JSON.parse(data.join("\n"));
        if (event === "piece") onPiece(payload);
        else if (event === "result") result = payload;
        else if (event === "error") throw apiError(500, payload);
      }
      if (done) break;
    }
    if (!result) throw new Error("the answer ended before its result");
    return result;
  }

  function setStatus(text, isError = false) {
    $("status").textContent = text;
    $("status").classList.toggle("error", isError);
  }

  // -- tasks and options ----------------------------------------------------------------------

  async function loadTasks() {
    let data;
    try {
      data = await api("/v1/tasks");
    } catch (error) {
      setStatus(error.status === 401 ? "Enter the API key to load the tasks." : `Cannot load tasks: ${error.message}`, true);
      return;
    }
    const select = $("task");
    const previous = select.value || "<OD>";
    select.replaceChildren();
    state.tasks = {};
    for (const task of data.tasks) {
      state.tasks[task.token] = task;
      const option = document.createElement("option");
      option.value = task.token;
      option.textContent = task.token;
      select.append(option);
    }
    select.value = state.tasks[previous] ? previous : data.tasks[0].token;
    onTaskChange();
    setStatus("");
    try {
      const info = await api("/v1/info");
      $("model-info").textContent = `Model: ${info.model.name}` +
        (info.model.parameters ? ` (${(info.model.parameters / 1e6).toFixed(1)}M parameters, ${info.model.device})` : "") + ".";
      for (const name of ["score_threshold", "nms_iou"]) {
        const field = document.querySelector(`[data-option="${name}"]`);
        field.hidden = !info.options.includes(name);
      }
      $("num_beams").max = info.limits.max_num_beams;
      $("max_new_tokens").max = info.limits.max_new_tokens;
    } catch (error) {
      // the page works without it
    }
    updateRunButton();
  }

  function currentTask() {
    return state.tasks[$("task").value] || null;
  }

  function onTaskChange() {
    const task = currentTask();
    $("task-description").textContent = task ? task.description : "";
    $("text-field").hidden = !task || task.input !== "text";
    $("region-field").hidden = !task || task.input !== "region";
    canvas.classList.toggle("drawing", Boolean(task && task.input === "region"));
    clearResult();
    draw();
    updateRunButton();
  }

  function updateRunButton() {
    $("run").disabled = !state.blob || !currentTask();
  }

  // -- images ---------------------------------------------------------------------------------

  async function setImage(blob, name) {
    state.blob = blob;
    state.name = name || "image";
    state.region = null;
    $("region").value = "";
    clearResult();
    try {
      state.bitmap = await createImageBitmap(blob, { imageOrientation: "from-image" });
      state.width = state.bitmap.width;
      state.height = state.bitmap.height;
    } catch (error) {
      // a format the browser cannot show (TIFF...): the server may still read it
      state.bitmap = null;
      state.width = 0;
      state.height = 0;
      setStatus("This browser cannot show the image; the server may still read it.");
    }
    layout();
    draw();
    updateRunButton();
  }

  async function loadExamples() {
    let data;
    try {
      data = await api("/examples");
    } catch (error) {
      return;
    }
    const box = $("examples");
    for (const example of data.examples) {
      const button = document.createElement("button");
      button.type = "button";
      button.title = example.name;
      button.dataset.name = example.name;
      button.setAttribute("aria-pressed", "false");
      const img = document.createElement("img");
      img.src = example.url;
      img.alt = `Example ${example.name}`;
      button.append(img);
      button.addEventListener("click", async () => {
        for (const other of box.querySelectorAll("button")) other.setAttribute("aria-pressed", "false");
        button.setAttribute("aria-pressed", "true");
        const response = await fetch(example.url);
        await setImage(await response.blob(), example.name);
      });
      box.append(button);
    }
  }

  function pickFile(file) {
    if (!file) return;
    for (const other of $("examples").querySelectorAll("button")) other.setAttribute("aria-pressed", "false");
    setImage(file, file.name);
  }

  // -- drawing --------------------------------------------------------------------------------

  function layout() {
    const ratio = window.devicePixelRatio || 1;
    const width = state.width || 512;
    const height = state.height || 384;
    const scale = MAX_SIDE / Math.max(width, height);
    const cssWidth = Math.round(width * scale);
    const cssHeight = Math.round(height * scale);
    canvas.style.width = `${cssWidth}px`;
    canvas.style.aspectRatio = `${width} / ${height}`;
    canvas.width = Math.round(cssWidth * ratio);
    canvas.height = Math.round(cssHeight * ratio);
    $("placeholder").hidden = Boolean(state.blob);
  }

  function palette(index) {
    // golden-ratio hues, as florence2.visualize does
    const hue = (index * 0.618033988749895) % 1;
    return `hsl(${Math.round(hue * 360)}, 85%, 47%)`;
  }

  function pairs(flat) {
    const points = [];
    for (let i = 0; i + 1 < flat.length; i += 2) points.push([Number(flat[i]), Number(flat[i + 1])]);
    return points;
  }

  // Every drawable result layout: boxes, OCR quads, polygons, open-vocabulary detection. Scores are
  // read when present ("scores", or "bboxes_scores"/"polygons_scores"), and are optional.
  function extractShapes(result) {
    if (!result || typeof result !== "object") return [];
    const shapes = [];
    const boxLabels = result.bboxes_labels || result.labels || [];
    const boxScores = result.bboxes_scores || result.scores || [];
    (result.bboxes || []).forEach((box, i) => {
      const [x0, y0, x1, y1] = box.map(Number);
      const points = [[Math.min(x0, x1), Math.min(y0, y1)], [Math.max(x0, x1), Math.max(y0, y1)]];
      shapes.push({ kind: "box", rings: [points], label: String(boxLabels[i] ?? ""), score: boxScores[i], fill: false });
    });
    (result.quad_boxes || []).forEach((quad, i) => {
      const labels = result.labels || [];
      const scores = result.scores || [];
      shapes.push({ kind: "polygon", rings: [pairs(quad)], label: String(labels[i] ?? ""), score: scores[i], fill: false });
    });
    const polygonLabels = result.polygons_labels || result.labels || [];
    const polygonScores = result.polygons_scores || (result.bboxes || result.quad_boxes ? [] : result.scores || []);
    (result.polygons || []).forEach((instance, i) => {
      const flat = instance.length && !Array.isArray(instance[0]) ? [instance] : instance;
      const rings = flat.map(pairs).filter((ring) => ring.length);
      if (!rings.length) return;
      shapes.push({ kind: "polygon", rings, label: String(polygonLabels[i] ?? ""), score: polygonScores[i], fill: true });
    });
    const keys = shapes.map((shape, i) => shape.label || `#${i}`);
    const distinct = [...new Set(keys)];
    shapes.forEach((shape, i) => { shape.colour = palette(distinct.indexOf(keys[i])); });
    return shapes;
  }

  function tagText(shape) {
    const score = typeof shape.score === "number" ? ` ${shape.score.toFixed(2)}` : "";
    return `${shape.label}${score}`.trim();
  }

  function draw() {
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!state.width) return;
    const k = canvas.width / state.width; // canvas pixels per image pixel
    const ratio = window.devicePixelRatio || 1;
    ctx.setTransform(k, 0, 0, k, 0, 0);
    ctx.imageSmoothingEnabled = k < 2; // keep small images crisp when enlarged
    if (state.bitmap) {
      ctx.drawImage(state.bitmap, 0, 0, state.width, state.height);
    } else {
      ctx.fillStyle = "#d5d9e0";
      ctx.fillRect(0, 0, state.width, state.height);
    }
    const line = (2 * ratio) / k;
    const shapes = extractShapes(state.result);
    for (const shape of shapes) {
      ctx.beginPath();
      for (const ring of shape.rings) {
        if (shape.kind === "box") {
          const [[x0, y0], [x1, y1]] = ring;
          ctx.rect(x0, y0, x1 - x0, y1 - y0);
        } else {
          ring.forEach(([x, y], j) => (j ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
          ctx.closePath();
        }
      }
      if (shape.fill) {
        ctx.globalAlpha = 0.3;
        ctx.fillStyle = shape.colour;
        ctx.fill("evenodd");
        ctx.globalAlpha = 1;
      }
      ctx.lineWidth = line;
      ctx.strokeStyle = shape.colour;
      ctx.stroke();
    }
    const fontSize = (13 * ratio) / k;
    ctx.font = `600 ${fontSize}px system-ui, sans-serif`;
    ctx.textBaseline = "top";
    for (const shape of shapes) {
      const text = tagText(shape);
      if (!text) continue;
      const points = shape.rings.flat();
      const x = Math.min(...points.map((p) => p[0]));
      const y = Math.min(...points.map((p) => p[1]));
      const pad = (3 * ratio) / k;
      const width = ctx.measureText(text).width + 2 * pad;
      const height = fontSize + 2 * pad;
      const tagX = Math.max(0, Math.min(x, state.width - width));
      const tagY = Math.max(0, Math.min(y - height >= 0 ? y - height : y, state.height - height));
      ctx.fillStyle = shape.colour;
      ctx.fillRect(tagX, tagY, width, height);
      ctx.fillStyle = "#fff";
      ctx.fillText(text, tagX + pad, tagY + pad);
    }
    const task = currentTask();
    if (state.region && task && task.input === "region") {
      const [x0, y0, x1, y1] = state.region;
      ctx.setLineDash([6 / k, 4 / k]);
      ctx.lineWidth = line;
      ctx.strokeStyle = "#ffffff";
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      ctx.setLineDash([]);
      ctx.strokeStyle = "#111111";
      ctx.lineWidth = line / 2;
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    }
    canvas.dataset.shapes = String(shapes.length);
    renderLegend(shapes);
  }

  function renderLegend(shapes) {
    const legend = $("legend");
    legend.replaceChildren();
    for (const shape of shapes) {
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = shape.colour;
      const text = document.createElement("span");
      text.textContent = tagText(shape) || "(no label)";
      item.append(swatch, text);
      legend.append(item);
    }
  }

  // -- region drawing -------------------------------------------------------------------------

  function toImage(event) {
    const rect = canvas.getBoundingClientRect();
    const x = ((event.clientX - rect.left) / rect.width) * state.width;
    const y = ((event.clientY - rect.top) / rect.height) * state.height;
    return [Math.min(Math.max(x, 0), state.width), Math.min(Math.max(y, 0), state.height)];
  }

  function regionTaskActive() {
    const task = currentTask();
    return Boolean(task && task.input === "region" && state.width);
  }

  function setRegionFromDrag(a, b) {
    state.region = [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
    $("region").value = state.region.map((v) => Math.round(v * 10) / 10).join(",");
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (!regionTaskActive()) return;
    canvas.setPointerCapture(event.pointerId);
    state.drag = toImage(event);
    setRegionFromDrag(state.drag, state.drag);
    draw();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!state.drag) return;
    setRegionFromDrag(state.drag, toImage(event));
    draw();
  });
  const endDrag = (event) => {
    if (!state.drag) return;
    setRegionFromDrag(state.drag, toImage(event));
    state.drag = null;
    const [x0, y0, x1, y1] = state.region;
    if (x1 - x0 < 1 || y1 - y0 < 1) {
      state.region = null;
      $("region").value = "";
    }
    draw();
  };
  canvas.addEventListener("pointerup", endDrag);
  canvas.addEventListener("pointercancel", endDrag);

  $("region").addEventListener("input", () => {
    const values = $("region").value.split(/[\s,]+/).filter(Boolean).map(Number);
    state.region = values.length === 4 && values.every(Number.isFinite) ? values : null;
    draw();
  });

  // -- running --------------------------------------------------------------------------------

  function clearResult() {
    state.result = null;
    $("answer").hidden = true;
    $("answer").textContent = "";
    $("json").textContent = "";
    $("timing").textContent = "";
    document.body.dataset.state = "idle";
  }

  async function run() {
    const task = currentTask();
    if (!state.blob || !task) return;
    const form = new FormData();
    form.append("image", state.blob, state.name);
    form.append("task", task.token);
    if (task.input === "text") {
      const text = $("text").value.trim();
      if (!text) return setStatus(`${task.token} needs a text.`, true);
      form.append("text", text);
    }
    if (task.input === "region") {
      if (!$("region").value.trim()) return setStatus(`${task.token} needs a region: drag on the image.`, true);
      form.append("region", $("region").value.trim());
    }
    for (const name of OPTIONAL_FIELDS) {
      const input = $(name);
      const field = input.closest("[data-option]");
      if (input.value !== "" && !(field && field.hidden)) form.append(name, input.value);
    }
    // text answers (captions, OCR) appear piece by piece while they are generated
    const streaming = task.result_type === "pure_text";
    if (streaming) form.append("stream", "true");
    $("run").disabled = true;
    document.body.dataset.state = "running";
    setStatus(`Running ${task.token}…`);
    $("answer").textContent = "";
    $("answer").hidden = true;
    const onPiece = (piece) => {
      $("answer").textContent += piece.text;
      $("answer").hidden = false;
    };
    try {
      const data = await api("/v1/predict", { method: "POST", body: form }, streaming ? onPiece : null);
      showResult(data, task.token);
      setStatus("");
    } catch (error) {
      document.body.dataset.state = "error";
      setStatus(error.message, true);
    } finally {
      updateRunButton();
    }
  }

  // Indented JSON with arrays of numbers (boxes, polygons, scores) kept on one line.
  function formatJson(value) {
    return JSON.stringify(value, null, 2).replace(/\[\s*(-?[\d.e+-]+(?:,\s*-?[\d.e+-]+)*)\s*\]/g, (match, inner) =>
      `[${inner.split(/,\s*/).join(", ")}]`);
  }

  function showResult(data, token) {
    state.result = data.results[token];
    if (!state.width) {
      state.width = data.image.width;
      state.height = data.image.height;
      layout();
    }
    if (typeof state.result === "string") {
      $("answer").textContent = state.result || "(empty answer)";
      $("answer").hidden = false;
    } else {
      $("answer").hidden = true;
    }
    const t = data.timings;
    const sequenceScores = data.results.sequence_scores || {};
    const score = typeof sequenceScores[token] === "number" ? ` · score ${sequenceScores[token].toFixed(2)}` : "";
    $("timing").textContent = `${token} · inference ${t.inference_ms.toFixed(0)} ms (batch of ${t.batch_size}) · ` +
      `queue ${t.queue_ms.toFixed(0)} ms · total ${t.total_ms.toFixed(0)} ms${score}`;
    $("json").textContent = formatJson(data);
    draw();
    document.body.dataset.state = "done";
  }

  // -- wiring ---------------------------------------------------------------------------------

  const drop = $("drop");
  drop.addEventListener("click", () => $("file").click());
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      $("file").click();
    }
  });
  $("file").addEventListener("change", () => pickFile($("file").files[0]));
  for (const target of [drop, canvas]) {
    target.addEventListener("dragover", (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
    target.addEventListener("dragleave", () => drop.classList.remove("over"));
    target.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      pickFile(event.dataTransfer.files[0]);
    });
  }
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData ? event.clipboardData.files : [])].find((f) => f.type.startsWith("image/"));
    if (file) pickFile(file);
  });
  $("task").addEventListener("change", onTaskChange);
  $("run").addEventListener("click", run);
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem("florence2-api-key", $("api-key").value.trim());
    loadTasks();
  });

  async function init() {
    layout();
    document.body.dataset.state = "loading";
    let health = { auth_required: false };
    try {
      health = await api("/health");
    } catch (error) {
      setStatus(`The server does not answer: ${error.message}`, true);
    }
    $("key-field").hidden = !health.auth_required;
    $("api-key").value = sessionStorage.getItem("florence2-api-key") || "";
    await Promise.all([loadExamples(), loadTasks()]);
    document.body.dataset.state = "idle";
  }

  init();
})();
