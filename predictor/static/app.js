// The detection page: choose, drop, paste or draw an image; see boxes and a list.
//
// Plain ES module, no framework and no build step; it talks to no one but the
// server that served it. One request per image, asked with a low threshold;
// the confidence slider then filters in the page, with no new request.

const config = JSON.parse(document.getElementById("predictor-config").textContent);
// The models the server serves, the default first (older servers list none).
const MODELS = config.models?.length
  ? config.models
  : [{ name: config.defaultModel ?? "", classes: config.classes ?? [], inputWidth: config.modelEdge, inputHeight: config.modelEdge }];
// The drawing pad is for hand-drawn digits and shapes: it uses the first model
// that knows the ten digits, when the server has one.
const DIGITS = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
const DRAWING_MODEL = MODELS.find((m) => DIGITS.every((d) => m.classes.includes(d)));

// Ask for everything above this once; the slider cannot go below it.
const REQUEST_THRESHOLD = Math.min(0.05, config.defaultThreshold);
// A photo is shrunk before upload only to a shorter side of this many model
// input edges, never less: the server resizes to the model edge anyway, and a
// margin of 2 keeps the JPEG re-encoding's artefacts below what that final
// resize averages away. So shrinking saves upload time, not accuracy.
const SHRINK_TO_EDGES = 2;
const JPEG_QUALITY = 0.92;
// Pen width over the pad's width: the training data's hand-drawn digits have
// strokes of 5-14% of their height; a digit drawn across most of the pad gets ~7%.
const PEN_WIDTH_RATIO = 0.055;

// The colours of predictor/runtime/render.py (there BGR, here RGB), chosen the same way,
// so a class has the same colour here and in `?render=true` pictures.
const PALETTE = [
  [255, 48, 48], [48, 200, 48], [0, 128, 255], [255, 200, 0], [200, 0, 200],
  [0, 255, 255], [255, 128, 0], [255, 0, 128], [128, 255, 0], [128, 0, 255],
  [0, 128, 128], [128, 128, 0], [128, 0, 128],
];

const $ = (id) => document.getElementById(id);
const elements = {
  modelPanel: $("model-panel"),
  model: $("model"),
  keyPanel: $("key-panel"),
  apiKey: $("api-key"),
  fileInput: $("file-input"),
  dropZone: $("drop-zone"),
  uploadPanel: $("upload-panel"),
  drawPanel: $("draw-panel"),
  pad: $("pad"),
  clearPad: $("clear-pad"),
  detectDrawing: $("detect-drawing"),
  threshold: $("threshold"),
  thresholdValue: $("threshold-value"),
  status: $("status"),
  error: $("error"),
  errorMessage: $("error-message"),
  retry: $("retry"),
  timing: $("timing"),
  figure: $("figure"),
  photo: $("photo"),
  boxes: $("boxes"),
  table: $("detections"),
  rows: $("detections").querySelector("tbody"),
  listCaption: $("list-caption"),
};

const state = {
  detections: [], // in pixels of the original image
  imageWidth: 0,
  imageHeight: 0,
  previewUrl: null,
  lastUpload: null, // kept for "Try again"
  sequence: 0, // the newest request; answers to older ones are dropped
  controller: null,
};

// ---------------------------------------------------------------- helpers

function colourFor(name) {
  let sum = 0;
  for (const byte of new TextEncoder().encode(name)) sum += byte;
  const [r, g, b] = PALETTE[sum % PALETTE.length];
  return `rgb(${r}, ${g}, ${b})`;
}

function setState(name) {
  document.body.dataset.state = name;
}

function showStatus(text) {
  elements.status.textContent = text;
}

function showError(message, { retry = false } = {}) {
  elements.errorMessage.textContent = message;
  elements.retry.hidden = !retry;
  elements.error.hidden = false;
  showStatus("");
  setState("error");
  revealResult();
}

// On a phone the result is below the input: bring it into view once it is there.
function revealResult() {
  const heading = $("result-heading");
  if (heading.getBoundingClientRect().top > window.innerHeight) {
    heading.scrollIntoView({ block: "start", behavior: "smooth" });
  }
}

function clearError() {
  elements.error.hidden = true;
  elements.errorMessage.textContent = "";
}

function canvasToBlob(canvas, type, quality) {
  return new Promise((resolve, reject) => {
    canvas.toBlob(
      (blob) => (blob ? resolve(blob) : reject(new Error("the browser could not encode the image"))),
      type,
      quality,
    );
  });
}

async function isJpeg(blob) {
  const head = new Uint8Array(await blob.slice(0, 3).arrayBuffer());
  return head.length === 3 && head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff;
}

function formatMs(ms) {
  return ms >= 100 ? `${Math.round(ms)} ms` : `${ms.toFixed(1)} ms`;
}

// `Server-Timing: read;dur=0.2, decode;dur=3.1, infer;dur=41.0, total;dur=44.5`
function parseServerTiming(header) {
  const steps = new Map();
  for (const part of (header || "").split(",")) {
    const [name, ...params] = part.split(";").map((s) => s.trim());
    const dur = params.find((p) => p.startsWith("dur="));
    if (name && dur) steps.set(name, Number(dur.slice(4)));
  }
  return steps;
}

// ---------------------------------------------------------------- the API key

// Kept in sessionStorage: it survives a reload of this tab, never reaches the
// disk, and dies with the tab. Some browsers refuse storage; the field alone works then.
const KEY_STORAGE = "predictor.apiKey";

function apiKey() {
  return config.authRequired ? elements.apiKey.value.trim() : "";
}

function setUpKey() {
  if (!config.authRequired) return;
  elements.keyPanel.hidden = false;
  try {
    elements.apiKey.value = sessionStorage.getItem(KEY_STORAGE) ?? "";
  } catch {
    // Storage is disabled: the person types the key once per page load.
  }
  elements.apiKey.addEventListener("input", () => {
    try {
      sessionStorage.setItem(KEY_STORAGE, elements.apiKey.value.trim());
    } catch {
      // As above.
    }
  });
}

// ---------------------------------------------------------------- preparing uploads

// What is sent: the file itself when it is a JPEG that needs no shrinking,
// otherwise a JPEG re-encoded in the page (other formats; large photos).
async function prepareUpload(file) {
  let bitmap;
  try {
    // from-image: EXIF orientation applied, as the server does, so both agree
    // on which way is up and on the width and height.
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    return null;
  }
  try {
    const { width, height } = bitmap;
    const jpeg = await isJpeg(file);
    const shortSide = Math.min(width, height);
    const model = selectedModel();
    const target = SHRINK_TO_EDGES * Math.max(model.inputWidth, model.inputHeight);
    if (jpeg && shortSide <= target) {
      return { blob: file, width, height, sentWidth: width, sentHeight: height, note: "" };
    }
    const scale = shortSide > target ? target / shortSide : 1;
    const sentWidth = Math.max(1, Math.round(width * scale));
    const sentHeight = Math.max(1, Math.round(height * scale));
    const canvas = document.createElement("canvas");
    canvas.width = sentWidth;
    canvas.height = sentHeight;
    const ctx = canvas.getContext("2d");
    // JPEG has no transparency: show transparent parts as the page does, white.
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, sentWidth, sentHeight);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(bitmap, 0, 0, sentWidth, sentHeight);
    const blob = await canvasToBlob(canvas, "image/jpeg", JPEG_QUALITY);
    const note =
      scale < 1 ? `sent at ${sentWidth}×${sentHeight} of ${width}×${height}` : "converted to JPEG";
    return { blob, width, height, sentWidth, sentHeight, note };
  } finally {
    bitmap.close();
  }
}

// Boxes come back in pixels of what was sent; scale them to the original image.
function toOriginal(detection, upload) {
  const sx = upload.width / upload.sentWidth;
  const sy = upload.height / upload.sentHeight;
  const clamp = (v, max) => Math.min(Math.max(v, 0), max);
  const x0 = clamp(Math.round(detection.x * sx), upload.width);
  const y0 = clamp(Math.round(detection.y * sy), upload.height);
  const x1 = clamp(Math.round((detection.x + detection.width) * sx), upload.width);
  const y1 = clamp(Math.round((detection.y + detection.height) * sy), upload.height);
  return {
    objectClass: detection.objectClass,
    probability: detection.probability,
    x: x0,
    y: y0,
    width: x1 - x0,
    height: y1 - y0,
  };
}

// ---------------------------------------------------------------- detection

async function detectFile(file, origin) {
  clearError();
  setState("busy");
  showStatus("Reading the image…");
  const upload = await prepareUpload(file);
  if (upload === null) {
    const name = file.name ? `“${file.name}”` : "The pasted data";
    showError(
      `Unsupported file: ${name} is not an image this browser can read. ` +
        "Choose a JPEG, PNG, WebP or GIF image.",
    );
    return;
  }
  upload.preview = file;
  upload.origin = origin;
  await detect(upload);
}

async function detect(upload) {
  state.lastUpload = upload;
  state.controller?.abort();
  const controller = new AbortController();
  state.controller = controller;
  const sequence = ++state.sequence;
  clearError();
  showPreview(upload);
  setState("busy");
  showStatus("Detecting…");
  elements.table.setAttribute("aria-busy", "true");

  // The original route answers with the default model unless ?model= names another.
  const model = selectedModel();
  const named = MODELS.length > 1 ? `&model=${encodeURIComponent(model.name)}` : "";
  const url = `${config.entryPoint}?threshold=${REQUEST_THRESHOLD}${named}`;
  const started = performance.now();
  let response;
  let payload = null;
  try {
    const headers = { "Content-Type": "image/jpeg", Accept: "application/json" };
    const key = apiKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    response = await fetch(url, {
      method: "POST",
      headers,
      body: upload.blob,
      signal: controller.signal,
    });
    payload = await response.json().catch(() => null);
  } catch (error) {
    if (sequence !== state.sequence) return;
    elements.table.removeAttribute("aria-busy");
    showError(`Could not reach the server (${error.message}). Is it running?`, { retry: true });
    return;
  }
  const roundTrip = performance.now() - started;
  if (sequence !== state.sequence) return;
  elements.table.removeAttribute("aria-busy");
  showTiming(parseServerTiming(response.headers.get("Server-Timing")), roundTrip, upload.note);

  if (!response.ok || payload === null || !Array.isArray(payload.prediction)) {
    showResult([], upload); // no stale boxes from an earlier image
    const retry = [401, 503, 504].includes(response.status);
    showError(describeError(response, payload, upload), { retry });
    if (response.status === 401 && config.authRequired) elements.apiKey.focus();
    return;
  }
  setState("done");
  showResult(
    payload.prediction.map((d) => toOriginal(d, upload)),
    upload,
  );
  revealResult();
}

function megabytes(bytes) {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

function describeError(response, payload, upload) {
  const detail = payload && typeof payload.error === "string" ? payload.error : "";
  switch (response.status) {
    case 401:
      return config.authRequired
        ? `The server refused the API key${apiKey() ? "" : " (none entered)"}: enter the right key above, then try again.`
        : `The server asks for an API key: ${detail || "unauthorized"}.`;
    case 504:
      return `The server was too busy to answer in time${detail ? ` (${detail})` : ""}. Try again.`;
    case 503: {
      const wait = Number(response.headers.get("Retry-After")) || 1;
      const seconds = wait === 1 ? "1 second" : `${wait} seconds`;
      return `The server is busy${detail ? ` (${detail})` : ""}. Try again in ${seconds}.`;
    }
    case 413: {
      const sizes =
        upload.blob.size > config.maxBodyBytes
          ? ` (the file is ${megabytes(upload.blob.size)}; the server accepts up to ${megabytes(config.maxBodyBytes)})`
          : "";
      return `The image is too large for the server: ${detail || "over its size limit"}${sizes}.`;
    }
    case 400:
    case 415:
      return `The server could not use this image: ${detail || "unsupported content"}.`;
    default:
      return `The server answered ${response.status} ${response.statusText}${detail ? `: ${detail}` : ""}.`;
  }
}

// ---------------------------------------------------------------- output

function showPreview(upload) {
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(upload.preview);
  elements.photo.src = state.previewUrl;
  state.imageWidth = upload.width;
  state.imageHeight = upload.height;
  elements.photo.alt =
    upload.origin === "drawing" ? "Your drawing" : `The image sent for detection (${upload.width}×${upload.height})`;
  elements.figure.hidden = false;
  state.detections = [];
  render();
}

function showTiming(steps, roundTrip, note) {
  const total = steps.get("total");
  const parts = [];
  if (total !== undefined) {
    const detail = [];
    if (steps.has("decode")) detail.push(`decode ${formatMs(steps.get("decode"))}`);
    if (steps.has("infer")) detail.push(`detection ${formatMs(steps.get("infer"))}`);
    parts.push(`Server time ${formatMs(total)}${detail.length ? ` (${detail.join(", ")})` : ""}`);
  }
  parts.push(`round trip ${formatMs(roundTrip)}`);
  if (note) parts.push(note);
  elements.timing.textContent = parts.join(" · ");
  elements.timing.dataset.serverMs = total === undefined ? "" : String(total);
  elements.timing.hidden = false;
}

function showResult(detections, upload) {
  state.detections = detections;
  state.imageWidth = upload.width;
  state.imageHeight = upload.height;
  render();
}

function threshold() {
  return Number(elements.threshold.value);
}

// Draws the boxes and fills the list for the current slider value. Cheap:
// called on every slider movement.
function render() {
  const t = threshold();
  elements.thresholdValue.textContent = t.toFixed(2);
  const shown = state.detections.filter((d) => d.probability > t);
  const { imageWidth: w, imageHeight: h } = state;

  const boxes = shown.map((d) => {
    const box = document.createElement("div");
    box.className = "box";
    // Percentages of the original image: right at any displayed size.
    box.style.left = `${(100 * d.x) / w}%`;
    box.style.top = `${(100 * d.y) / h}%`;
    box.style.width = `${(100 * d.width) / w}%`;
    box.style.height = `${(100 * d.height) / h}%`;
    box.style.setProperty("--colour", colourFor(d.objectClass));
    const label = document.createElement("span");
    label.className = "label" + (d.y < 0.06 * h ? " inside" : "");
    label.textContent = `${d.objectClass} ${d.probability.toFixed(2)}`;
    box.append(label);
    return box;
  });
  // The most confident box last, so that it is drawn on top of the others.
  elements.boxes.replaceChildren(...boxes.reverse());

  const rows = shown.map((d) => {
    const row = document.createElement("tr");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colourFor(d.objectClass);
    const name = document.createElement("td");
    name.append(swatch, d.objectClass);
    row.append(name);
    for (const value of [d.probability.toFixed(3), d.x, d.y, d.width, d.height]) {
      const cell = document.createElement("td");
      cell.textContent = String(value);
      row.append(cell);
    }
    return row;
  });
  elements.rows.replaceChildren(...rows);
  elements.table.hidden = state.detections.length === 0;
  elements.listCaption.hidden = elements.table.hidden;

  if (document.body.dataset.state === "done") {
    const all = state.detections.length;
    showStatus(
      all === 0
        ? "Nothing found."
        : `${shown.length} of ${all} detection${all === 1 ? "" : "s"} above ${t.toFixed(2)}.`,
    );
  }
  elements.figure.dataset.count = String(shown.length);
}

// ---------------------------------------------------------------- drawing pad

function setUpPad() {
  const pad = elements.pad;
  const ctx = pad.getContext("2d");
  let empty = true;
  let stroke = null; // { id, x, y } of the pointer that is drawing

  const clear = () => {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, pad.width, pad.height);
    empty = true;
    elements.detectDrawing.disabled = true;
  };
  const point = (event) => {
    const rect = pad.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) * pad.width) / rect.width,
      y: ((event.clientY - rect.top) * pad.height) / rect.height,
    };
  };
  const segment = (from, to) => {
    ctx.strokeStyle = "#000";
    ctx.lineWidth = PEN_WIDTH_RATIO * pad.width;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
  };

  pad.addEventListener("pointerdown", (event) => {
    if (event.pointerType === "mouse" && event.button !== 0) return;
    event.preventDefault();
    try {
      // Keep receiving the stroke when the pointer leaves the pad mid-stroke.
      pad.setPointerCapture(event.pointerId);
    } catch {
      // Not an active pointer (e.g. a synthetic event): draw without capture.
    }
    const p = point(event);
    stroke = { id: event.pointerId, ...p };
    segment(p, p); // a dot for a tap
    empty = false;
    elements.detectDrawing.disabled = false;
  });
  pad.addEventListener("pointermove", (event) => {
    if (!stroke || event.pointerId !== stroke.id) return;
    event.preventDefault();
    // Coalesced events keep fast strokes smooth.
    const events = event.getCoalescedEvents?.() ?? [];
    for (const e of events.length ? events : [event]) {
      const p = point(e);
      segment(stroke, p);
      stroke.x = p.x;
      stroke.y = p.y;
    }
  });
  const end = (event) => {
    if (stroke && event.pointerId === stroke.id) stroke = null;
  };
  pad.addEventListener("pointerup", end);
  pad.addEventListener("pointercancel", end);

  elements.clearPad.addEventListener("click", clear);
  elements.detectDrawing.addEventListener("click", async () => {
    if (empty) return;
    let blob;
    try {
      blob = await canvasToBlob(pad, "image/jpeg", JPEG_QUALITY);
    } catch (error) {
      showError(`Could not read the drawing: ${error.message}.`);
      return;
    }
    const { width, height } = pad;
    await detect({
      blob,
      preview: blob,
      origin: "drawing",
      width,
      height,
      sentWidth: width,
      sentHeight: height,
      note: "",
    });
  });
  clear();
}

// ---------------------------------------------------------------- input wiring

function setMode(mode) {
  if (mode === "draw" && DRAWING_MODEL && elements.model.value !== DRAWING_MODEL.name) {
    elements.model.value = DRAWING_MODEL.name;
    describeModel();
  }
  elements.uploadPanel.hidden = mode !== "upload";
  elements.drawPanel.hidden = mode !== "draw";
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.checked = radio.value === mode;
  }
}

function setUpInputs() {
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => setMode(radio.value));
  }

  elements.fileInput.addEventListener("change", () => {
    const file = elements.fileInput.files[0];
    if (file) detectFile(file, "file");
    // Choosing the same file again should detect again.
    elements.fileInput.value = "";
  });

  // Without this, dropping a file anywhere else would make the browser open it.
  for (const type of ["dragover", "drop"]) {
    document.addEventListener(type, (event) => event.preventDefault());
  }
  const zone = elements.dropZone;
  zone.addEventListener("dragenter", () => zone.classList.add("dragging"));
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer?.files?.[0];
    if (file) detectFile(file, "drop");
    else showError("Nothing to detect: drop an image file.");
  });

  document.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files ?? [])];
    if (files.length === 0) {
      showError("Nothing to detect: the clipboard holds no image.");
      return;
    }
    event.preventDefault();
    setMode("upload");
    detectFile(files.find((f) => f.type.startsWith("image/")) ?? files[0], "paste");
  });

  elements.threshold.addEventListener("input", render);
  elements.retry.addEventListener("click", () => {
    if (state.lastUpload) detect(state.lastUpload);
  });
}

function setUpThreshold() {
  const slider = elements.threshold;
  slider.min = String(REQUEST_THRESHOLD);
  const initial = Math.min(Math.max(config.defaultThreshold, REQUEST_THRESHOLD), 1);
  slider.value = String(initial);
}

function selectedModel() {
  return MODELS.find((m) => m.name === elements.model.value) ?? MODELS[0];
}

function setUpModels() {
  for (const model of MODELS) {
    const option = document.createElement("option");
    option.value = model.name;
    option.textContent = model.name;
    elements.model.append(option);
  }
  elements.model.value = MODELS[0].name;
  // One model: nothing to choose.
  elements.modelPanel.hidden = MODELS.length < 2;
  elements.model.addEventListener("change", () => {
    describeModel();
    // The boxes on screen were found by the other model: ask this one.
    if (state.lastUpload) detect(state.lastUpload);
  });
}

function describeModel() {
  const classes = selectedModel().classes || [];
  if (classes.length) {
    $("classes-line").textContent =
      `Finds ${classes.join(", ")} in a photo or a drawing, and shows where.`;
  }
}

setUpModels();
describeModel();
setUpKey();
setUpThreshold();
setUpInputs();
setUpPad();
render();
setState("ready");
