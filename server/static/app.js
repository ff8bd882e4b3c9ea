/* NExT-GPT chat demo: one WebSocket per conversation (shared/API.md, "WebSocket /v1/chat/ws").
 *
 * Client -> server: {type: "chat.request", ...}, {type: "cancel"}, {type: "reset"}.
 * Server -> client: text.delta, media.progress, media.done, done, error.
 * No framework, no build step, nothing fetched from anywhere but this server.
 */
(() => {
  "use strict";

  const MEDIA = ["image", "audio", "video"];
  const LABEL = { image: "Image", audio: "Audio", video: "Video" };
  const STORE_KEY = SETTINGS_KEY;  // index.html defines it, and themeFor, for the first paint
  const CLIENT_MAX_BYTES = 200 * 1024 * 1024; // beyond this the browser itself struggles; the server's own limit is lower
  const DEFAULTS = Object.freeze({
    outputs: { image: "auto", audio: "auto", video: "auto" },
    temperature: 1.0,
    max_tokens: 246,
    seed: "",
    steps: "",
    guidance: "",
    frames: "",
    audio_length: "",
    theme: "system",
    api_key: "",
  });
  const EXT_MIME = {
    png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", gif: "image/gif", webp: "image/webp",
    bmp: "image/bmp", tif: "image/tiff", tiff: "image/tiff", avif: "image/avif", heic: "image/heic",
    wav: "audio/wav", mp3: "audio/mpeg", flac: "audio/flac", ogg: "audio/ogg", oga: "audio/ogg",
    opus: "audio/ogg", m4a: "audio/mp4", aac: "audio/aac", weba: "audio/webm",
    mp4: "video/mp4", m4v: "video/mp4", webm: "video/webm", mov: "video/quicktime", mkv: "video/x-matroska",
    avi: "video/x-msvideo",
  };
  const INPUT_AUDIO_FORMAT = {
    "audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/vnd.wave": "wav",
    "audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/flac": "flac", "audio/x-flac": "flac", "audio/ogg": "ogg",
  };
  const OUTPUT_EXT = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "audio/wav": "wav",
    "audio/x-wav": "wav", "audio/mpeg": "mp3", "video/mp4": "mp4", "video/webm": "webm" };

  const $ = (sel, root = document) => root.querySelector(sel);
  const el = (tag, attrs = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k in node && typeof v !== "string") node[k] = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children.flat()) if (child != null) node.append(child);
    return node;
  };
  const icon = (name, cls = "ico") => {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", cls);
    svg.setAttribute("aria-hidden", "true");
    const use = document.createElementNS(ns, "use");
    use.setAttribute("href", `#i-${name}`);
    svg.append(use);
    return svg;
  };
  const uid = () => (crypto.randomUUID ? crypto.randomUUID() : `r${Date.now().toString(36)}${Math.random().toString(36).slice(2)}`);
  const fmtBytes = (n) => (n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(n < 10240 ? 1 : 0)} KB`
    : `${(n / 1048576).toFixed(n < 10485760 ? 1 : 0)} MB`);
  const fmtSecs = (s) => (s < 10 ? `${s.toFixed(1)} s` : s < 60 ? `${Math.round(s)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`);

  // ------------------------------------------------------------------ DOM

  const ui = {
    app: $("#app"), conn: $("#conn-text"), modelName: $("#model-name"),
    scroller: $("#scroller"), empty: $("#empty"), messages: $("#messages"), jump: $("#jump"),
    loading: $("#loading"), loadingTitle: $("#loading-title"), loadingDetail: $("#loading-detail"),
    composer: $("#composer"), tray: $("#tray"), prompt: $("#prompt"), fileInput: $("#file-input"),
    attach: $("#attach"), mic: $("#mic"), recTime: $("#rec-time"), send: $("#send"), stop: $("#stop"),
    newChat: $("#new-chat"), openSettings: $("#open-settings"), settings: $("#settings"),
    settingsForm: $("#settings-form"), closeSettings: $("#close-settings"), doneSettings: $("#done-settings"),
    resetSettings: $("#reset-settings"), scrim: $("#scrim"), drop: $("#drop"), toast: $("#toast"),
    temperatureOut: $("#temperature-out"),
  };

  // ------------------------------------------------------------------ settings

  function loadSettings() {
    let saved = {};
    try { saved = JSON.parse(localStorage.getItem(STORE_KEY) || "{}") || {}; } catch { saved = {}; }
    const s = { ...DEFAULTS, ...saved, outputs: { ...DEFAULTS.outputs, ...(saved.outputs || {}) } };
    for (const m of MEDIA) if (!["off", "auto", "always"].includes(s.outputs[m])) s.outputs[m] = "auto";
    return s;
  }
  let settings = loadSettings();
  function saveSettings() {
    try { localStorage.setItem(STORE_KEY, JSON.stringify(settings)); } catch { /* private mode: keep in memory */ }
  }

  const FIELD_OF = { temperature: "#set-temperature", max_tokens: "#set-max-tokens", seed: "#set-seed",
    steps: "#set-steps", guidance: "#set-guidance", frames: "#set-frames", audio_length: "#set-audio-len",
    api_key: "#set-api-key" };

  function renderSettings() {
    for (const [key, sel] of Object.entries(FIELD_OF)) $(sel).value = settings[key] ?? "";
    ui.temperatureOut.textContent = Number(settings.temperature).toFixed(2);
    for (const m of MEDIA) {
      const radio = ui.settingsForm.querySelector(`input[name="out-${m}"][value="${settings.outputs[m]}"]`);
      if (radio) radio.checked = true;
    }
    const theme = ui.settingsForm.querySelector(`input[name="theme"][value="${settings.theme}"]`);
    if (theme) theme.checked = true;
    renderOutputChips();
    applyTheme();
  }

  function applyTheme() {  // "system" resolved here, so that style.css holds one dark palette
    document.documentElement.dataset.theme = themeFor(settings.theme);
  }
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", applyTheme);

  function renderOutputChips() {
    for (const chip of document.querySelectorAll(".out-chip")) {
      const m = chip.dataset.modality;
      const st = settings.outputs[m];
      chip.dataset.state = st;
      const meaning = st === "off" ? "never produced" : st === "auto" ? "the model decides" : "always produced";
      chip.setAttribute("aria-label", `${LABEL[m]} output: ${st}, ${meaning}. Activate to change.`);
      chip.title = `${LABEL[m]}: ${meaning} (click to change)`;
    }
  }

  ui.settingsForm.addEventListener("input", (ev) => {
    const t = ev.target;
    if (t.name && t.name.startsWith("out-")) settings.outputs[t.name.slice(4)] = t.value;
    else if (t.name === "theme") settings.theme = t.value;
    else if (t.name === "temperature") settings.temperature = Number(t.value);
    else if (t.name === "api_key") {
      settings.api_key = t.value.trim();
      scheduleAuthRetry();
    } else if (t.name in DEFAULTS) settings[t.name] = t.value === "" ? "" : t.value;
    ui.temperatureOut.textContent = Number(settings.temperature).toFixed(2);
    renderOutputChips();
    applyTheme();
    saveSettings();
  });
  ui.resetSettings.addEventListener("click", () => {
    const key = settings.api_key;
    settings = { ...structuredClone(DEFAULTS), api_key: key };
    saveSettings();
    renderSettings();
    toast("Settings restored to their defaults");
  });

  for (const chip of document.querySelectorAll(".out-chip")) {
    chip.addEventListener("click", () => {
      const m = chip.dataset.modality;
      const order = ["auto", "always", "off"];
      settings.outputs[m] = order[(order.indexOf(settings.outputs[m]) + 1) % order.length];
      saveSettings();
      renderSettings();
    });
  }

  let settingsReturnFocus = null;
  function openSettings() {
    settingsReturnFocus = document.activeElement;
    ui.settings.hidden = false;
    ui.scrim.hidden = false;
    ui.openSettings.setAttribute("aria-expanded", "true");
    $("#close-settings").focus();
  }
  function closeSettings() {
    if (ui.settings.hidden) return;
    ui.settings.hidden = true;
    ui.scrim.hidden = true;
    ui.openSettings.setAttribute("aria-expanded", "false");
    (settingsReturnFocus && settingsReturnFocus.focus ? settingsReturnFocus : ui.prompt).focus();
  }
  ui.openSettings.addEventListener("click", () => (ui.settings.hidden ? openSettings() : closeSettings()));
  ui.closeSettings.addEventListener("click", closeSettings);
  ui.doneSettings.addEventListener("click", closeSettings);
  ui.scrim.addEventListener("click", closeSettings);

  // ------------------------------------------------------------------ small UI helpers

  let toastTimer = 0;
  function toast(text, ms = 3200) {
    ui.toast.textContent = text;
    ui.toast.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { ui.toast.hidden = true; }, ms);
  }

  let stick = true;
  function nearBottom() {
    const s = ui.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }
  ui.scroller.addEventListener("scroll", () => {
    stick = nearBottom();
    ui.jump.hidden = stick || !ui.messages.children.length;
  }, { passive: true });
  let scrollQueued = false;
  function follow(force = false) {
    if (force) stick = true;
    if (!stick || scrollQueued) return;
    scrollQueued = true;
    requestAnimationFrame(() => {
      scrollQueued = false;
      ui.scroller.style.scrollBehavior = "auto";
      ui.scroller.scrollTop = ui.scroller.scrollHeight;
      ui.scroller.style.scrollBehavior = "";
    });
  }
  ui.jump.addEventListener("click", () => { follow(true); ui.jump.hidden = true; });

  function autosize() {
    ui.prompt.style.height = "auto";
    ui.prompt.style.height = `${Math.min(ui.prompt.scrollHeight, 220)}px`;
  }

  function syncEmpty() {
    ui.empty.hidden = ui.messages.children.length > 0;
  }

  // ------------------------------------------------------------------ attachments

  /** @type {{id:string, file:File, mime:string, modality:string, url:string}[]} */
  let attachments = [];
  const objectUrls = new Set(); // revoked at "new conversation"

  function objectUrl(blob) {
    const u = URL.createObjectURL(blob);
    objectUrls.add(u);
    return u;
  }

  function mimeOf(file) {
    if (file.type) return file.type.split(";")[0].toLowerCase();
    const ext = (file.name.split(".").pop() || "").toLowerCase();
    return EXT_MIME[ext] || "";
  }

  function addFiles(files) {
    let added = 0;
    for (const file of files) {
      const mime = mimeOf(file);
      const modality = mime.split("/")[0];
      if (!MEDIA.includes(modality)) {
        systemNotice("That file type isn't supported.",
          `“${file.name || "The pasted item"}” is not an image, audio or video file, so it can't be sent.`);
        continue;
      }
      if (file.size > CLIENT_MAX_BYTES) {
        systemNotice("That file is too large.", `“${file.name}” is ${fmtBytes(file.size)}; files this big can't be sent from the browser.`);
        continue;
      }
      if (file.size === 0) {
        systemNotice("That file is empty.", `“${file.name}” has no content.`);
        continue;
      }
      attachments.push({ id: uid(), file, mime, modality, url: objectUrl(file) });
      added++;
    }
    renderTray();
    if (added) ui.prompt.focus();
  }

  function renderTray() {
    ui.tray.replaceChildren(...attachments.map((a) => {
      let thumb;
      if (a.modality === "image") {
        thumb = el("img", { src: a.url, alt: "" });
        thumb.addEventListener("error", () => thumb.replaceWith(icon("image")), { once: true });
      }
      else if (a.modality === "video") thumb = el("video", { src: a.url, muted: true, preload: "metadata", "aria-hidden": "true" });
      else thumb = icon("audio");
      const name = a.file.name || `${LABEL[a.modality]} clip`;
      return el("li", { class: `chip chip-${a.modality}`, "data-id": a.id },
        el("div", { class: "chip-thumb" }, thumb),
        el("div", { class: "chip-info" },
          el("span", { class: "chip-name", text: name, title: name }),
          el("span", { class: "chip-size", text: `${LABEL[a.modality]} · ${fmtBytes(a.file.size)}` })),
        el("button", {
          type: "button", class: "chip-remove", "aria-label": `Remove ${name}`, title: "Remove",
          onclick: () => {
            attachments = attachments.filter((x) => x.id !== a.id);
            renderTray();
            ui.prompt.focus();
          },
        }, icon("x")));
    }));
    ui.tray.hidden = attachments.length === 0;
    updateSend();
  }

  ui.attach.addEventListener("click", () => ui.fileInput.click());
  ui.fileInput.addEventListener("change", () => {
    addFiles([...ui.fileInput.files]);
    ui.fileInput.value = "";
  });

  // drag and drop anywhere on the page
  let dragDepth = 0;
  const hasFiles = (ev) => ev.dataTransfer && [...(ev.dataTransfer.types || [])].includes("Files");
  window.addEventListener("dragenter", (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault();
    dragDepth++;
    ui.drop.hidden = false;
  });
  window.addEventListener("dragover", (ev) => { if (hasFiles(ev)) { ev.preventDefault(); ev.dataTransfer.dropEffect = "copy"; } });
  window.addEventListener("dragleave", (ev) => {
    if (!hasFiles(ev)) return;
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) ui.drop.hidden = true;
  });
  window.addEventListener("drop", (ev) => {
    if (!ev.dataTransfer) return;
    ev.preventDefault();
    dragDepth = 0;
    ui.drop.hidden = true;
    if (ev.dataTransfer.files && ev.dataTransfer.files.length) addFiles([...ev.dataTransfer.files]);
  });

  // paste files (screenshots, copied images)
  document.addEventListener("paste", (ev) => {
    const files = [...(ev.clipboardData ? ev.clipboardData.files : [])];
    if (!files.length) return;
    ev.preventDefault();
    const named = files.map((f, i) => (f.name && f.name !== "image.png" ? f
      : new File([f], `pasted-${new Date().toTimeString().slice(0, 8).replace(/:/g, "")}${i ? "-" + i : ""}.${(mimeOf(f).split("/")[1] || "bin").replace("jpeg", "jpg")}`, { type: f.type })));
    addFiles(named);
  });

  // microphone
  let recorder = null;
  let recStart = 0;
  let recTimer = 0;
  if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia && window.MediaRecorder && window.isSecureContext) {
    ui.mic.hidden = false;
  }
  ui.mic.addEventListener("click", async () => {
    if (recorder) { recorder.stop(); return; }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (err) {
      toast(err && err.name === "NotAllowedError" ? "Microphone access was blocked. Allow it in the browser to record."
        : "No microphone could be opened.");
      return;
    }
    const type = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/mp4"].find((t) => MediaRecorder.isTypeSupported(t)) || "";
    const chunks = [];
    recorder = new MediaRecorder(stream, type ? { mimeType: type } : undefined);
    recorder.addEventListener("dataavailable", (e) => { if (e.data && e.data.size) chunks.push(e.data); });
    recorder.addEventListener("stop", () => {
      stream.getTracks().forEach((t) => t.stop());
      clearInterval(recTimer);
      const mime = (recorder.mimeType || type || "audio/webm").split(";")[0];
      recorder = null;
      ui.mic.setAttribute("aria-pressed", "false");
      ui.mic.setAttribute("aria-label", "Record from microphone");
      const ext = mime.includes("ogg") ? "ogg" : mime.includes("mp4") ? "m4a" : "webm";
      const stamp = new Date().toTimeString().slice(0, 8).replace(/:/g, "");
      if (chunks.length) addFiles([new File(chunks, `recording-${stamp}.${ext}`, { type: mime })]);
    });
    recorder.start(250);
    recStart = Date.now();
    ui.recTime.textContent = "0:00";
    recTimer = setInterval(() => {
      const s = Math.floor((Date.now() - recStart) / 1000);
      ui.recTime.textContent = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
    }, 250);
    ui.mic.setAttribute("aria-pressed", "true");
    ui.mic.setAttribute("aria-label", "Stop recording");
  });

  function readDataUrl(att) {
    return new Promise((resolve, reject) => {
      const r = new FileReader();
      r.onload = () => {
        let url = String(r.result);
        // the browser may not know the type (no extension it maps): name the one we inferred
        const comma = url.indexOf(",");
        url = `data:${att.mime};base64,${url.slice(comma + 1)}`;
        resolve(url);
      };
      r.onerror = () => reject(r.error || new Error("the file could not be read"));
      r.readAsDataURL(att.file);
    });
  }

  async function contentPart(att) {
    const url = await readDataUrl(att);
    if (att.modality === "image") return { type: "image_url", image_url: { url } };
    if (att.modality === "video") return { type: "video_url", video_url: { url } };
    const format = INPUT_AUDIO_FORMAT[att.mime];
    if (format) return { type: "input_audio", input_audio: { data: url.slice(url.indexOf(",") + 1), format } };
    return { type: "audio_url", audio_url: { url } };
  }

  // ------------------------------------------------------------------ connection

  let ws = null;
  let conn = "connecting"; // connecting | loading | ready | reconnecting | offline | auth
  let attempt = 0;
  let retryTimer = 0;
  let everConnected = false;
  let serverForgot = false; // the socket dropped mid-conversation: the server's history is gone

  function setConn(state, text) {
    conn = state;
    ui.app.dataset.conn = state;
    ui.conn.textContent = text;
    updateSend();
  }

  function wsUrl() {
    const u = new URL("v1/chat/ws", location.href);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    if (settings.api_key) u.searchParams.set("api_key", settings.api_key);
    return u.href;
  }

  function authHeaders() {
    return settings.api_key ? { Authorization: `Bearer ${settings.api_key}` } : {};
  }

  async function checkReady() {
    clearTimeout(retryTimer);
    let res;
    try {
      res = await fetch("ready", { cache: "no-store", headers: authHeaders() });
    } catch {
      setConn("offline", "Server unreachable");
      showLoading("Can't reach the server", "Retrying in a moment. Check that the server is running.");
      retryTimer = setTimeout(checkReady, backoff());
      return;
    }
    if (res.ok) {
      // Browsers learn nothing from a refused WebSocket handshake, so ask an HTTP route whether
      // the key (if the server wants one) is accepted before opening the socket.
      if (await probeModels() === 401) {
        needKey();
        return;
      }
      hideLoading();
      connect();
      return;
    }
    let why = "";
    try { why = ((await res.json()).error || {}).message || ""; } catch { /* not JSON */ }
    setConn("loading", "Loading model…");
    showLoading("Loading the model…", why && !/still loading/i.test(why)
      ? `${capitalize(why)}. This page connects on its own when it is ready.`
      : "The weights are being loaded and warmed up. This page connects on its own when they are ready.");
    retryTimer = setTimeout(checkReady, 1000);
  }

  function backoff() {
    attempt = Math.min(attempt + 1, 6);
    return Math.min(10000, 400 * 2 ** (attempt - 1));
  }

  function showLoading(title, detail) {
    ui.loadingTitle.textContent = title;
    ui.loadingDetail.textContent = detail;
    ui.loading.hidden = false;
  }
  function hideLoading() { ui.loading.hidden = true; }

  /** GET v1/models: the model's name for the header, and whether our API key is accepted. */
  async function probeModels() {
    try {
      const res = await fetch("v1/models", { headers: authHeaders(), cache: "no-store" });
      if (!res.ok) return res.status;
      const body = await res.json();
      const id = body.data && body.data[0] && body.data[0].id;
      if (id) ui.modelName.textContent = id;
      return res.status;
    } catch {
      return 0; // unreachable: the socket will tell
    }
  }

  function needKey() {
    setConn("auth", settings.api_key ? "API key refused" : "API key needed");
    showLoading(settings.api_key ? "The API key was refused" : "This server needs an API key",
      "Enter it under Settings → Access; the page connects as soon as it is accepted.");
  }

  function connect() {
    if (ws) return;
    setConn(everConnected ? "reconnecting" : "connecting", everConnected ? "Reconnecting…" : "Connecting…");
    let socket;
    try {
      socket = new WebSocket(wsUrl());
    } catch {
      scheduleReconnect();
      return;
    }
    ws = socket;
    socket.addEventListener("open", () => {
      if (ws !== socket) return;
      attempt = 0;
      setConn("ready", "Ready");
      if (everConnected && serverForgot && ui.messages.children.length) {
        systemNotice("Reconnected.", "The connection dropped, so the model no longer remembers the earlier messages of this conversation.", "info");
      }
      serverForgot = false;
      everConnected = true;
    });
    socket.addEventListener("message", (ev) => {
      if (ws !== socket) return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      onServerMessage(msg);
    });
    socket.addEventListener("close", (ev) => {
      if (ws !== socket) return;
      ws = null;
      serverForgot = true;
      if (ev.code === 1008 || ev.code === 4401 || ev.code === 4403) {
        if (turn) failTurn({ code: "invalid_api_key", message: ev.reason || "" });
        needKey();
        return;
      }
      if (turn) {
        if (ev.code === 1009) failTurn({ code: "too_large", message: ev.reason || "the message was larger than the server accepts" });
        else if (turn.stopping) finishTurn({ finish_reason: "cancelled" });
        else failTurn({ code: "connection_lost", message: "" });
      }
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    clearTimeout(retryTimer);
    setConn("reconnecting", "Reconnecting…");
    retryTimer = setTimeout(checkReady, backoff());
  }

  let authRetry = 0;
  function scheduleAuthRetry() {
    if (conn !== "auth") return;
    clearTimeout(authRetry);
    authRetry = setTimeout(() => { attempt = 0; checkReady(); }, 600);
  }

  window.addEventListener("online", () => { if (!ws) { attempt = 0; checkReady(); } });

  function sendJson(obj) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(obj));
    return true;
  }

  // ------------------------------------------------------------------ the conversation

  /** The request in flight, if any. */
  let turn = null;

  function userMessage(text, atts) {
    const body = el("div", { class: "msg-body" });
    if (atts.length) {
      body.append(el("div", { class: "attachments-sent" }, atts.map((a) => {
        const name = a.file.name || LABEL[a.modality];
        if (a.modality === "image") {
          const img = el("img", { src: a.url, alt: `Attached image ${name}` });
          img.addEventListener("error", () => img.replaceWith(fileTile(name, "image")), { once: true });
          return img;
        }
        if (a.modality === "video") return el("video", { src: a.url, controls: true, muted: true, playsInline: true, preload: "metadata", "aria-label": `Attached video ${name}` });
        return el("div", { class: "sent-audio" },
          el("audio", { src: a.url, controls: true, preload: "metadata", "aria-label": `Attached audio ${name}` }),
          el("span", { class: "name", text: name }));
      })));
    }
    if (text) body.append(el("div", { class: "bubble", text }));
    const li = el("li", { class: "msg msg-user" }, el("h2", { class: "sr-only", text: "You said:" }), body);
    ui.messages.append(li);
    syncEmpty();
    return li;
  }

  function fileTile(name, modality) {
    return el("div", { class: "sent-file", title: name }, icon(modality), el("span", { class: "name", text: name }));
  }

  function assistantMessage() {
    const avatar = el("div", { class: "avatar", "aria-hidden": "true" });
    avatar.append(icon("logo", "avatar"));
    const textEl = el("div", { class: "msg-text" });
    const typing = el("div", { class: "typing", "aria-label": "NExT-GPT is thinking", role: "img" }, el("span"), el("span"), el("span"));
    const grid = el("div", { class: "outputs-grid", hidden: true });
    const notes = el("div", { class: "msg-notes" });
    const foot = el("div", { class: "msg-foot" });
    const body = el("div", { class: "msg-body" }, el("h2", { class: "sr-only", text: "NExT-GPT said:" }), typing, textEl, grid, notes, foot);
    const li = el("li", { class: "msg msg-assistant streaming", "aria-busy": "true" }, avatar, body);
    ui.messages.append(li);
    syncEmpty();
    return { li, textEl, typing, grid, notes, foot };
  }

  function systemNotice(title, detail, kind = "error") {
    const li = el("li", { class: "msg msg-system" }, noticeEl(title, detail, kind));
    ui.messages.append(li);
    syncEmpty();
    follow(true);
    return li;
  }

  function noticeEl(title, detail, kind = "error", action = null) {
    return el("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" },
      icon(kind === "error" ? "alert" : "check"),
      el("div", {}, el("strong", { text: title }), detail ? el("span", { class: "detail", text: detail }) : null, action));
  }

  function capitalize(s) { return s ? s[0].toUpperCase() + s.slice(1) : s; }

  /** Turn a server error object into plain words. */
  function friendly(err, names = []) {
    const code = err.code || "";
    let detail = String(err.message || "");
    // "messages[0].content[2]: the image could not be decoded" -> “cat.png”: the image ...
    detail = detail.replace(/messages\[\d+\]\.content\[(\d+)\](\.[\w.]+)?/g, (m, i) => (names[+i] ? `“${names[+i]}”` : "one attachment"));
    detail = detail.replace(/\s*<[^<>]*\bat 0x[0-9a-f]+>/gi, "").replace(/:\s*$/, "");
    detail = capitalize(detail.trim());
    if (detail && !/[.!?]$/.test(detail)) detail += ".";
    const status = err.status;
    if (code === "connection_lost") return { title: "The connection dropped before the answer finished.", detail: "Reconnecting… send your message again once the status says Ready." };
    if (code === "too_large" || code === "media_too_large" || status === 413) return { title: "That file is too large.", detail };
    if (code === "unsupported_media" || code === "unsupported_media_type" || status === 415) return { title: "That file type isn't supported.", detail };
    if (code === "corrupt_media" || code === "invalid_media") return { title: "That file couldn't be read.", detail: detail || "It may be damaged or not what its name says." };
    if (code === "queue_full" || status === 429) return { title: "The server is busy right now.", detail: "Too many requests are waiting. Try again in a few seconds." };
    if (code === "not_ready" || status === 503) return { title: "The model is still loading.", detail: "Try again when the status says Ready." };
    if (code === "deadline_exceeded" || status === 504) return { title: "That took too long.", detail: detail || "Try fewer steps or shorter media." };
    if (code === "invalid_api_key" || status === 401) return { title: settings.api_key ? "The API key was refused." : "This server needs an API key.", detail: "Enter it under Settings → Access." };
    if (code === "invalid_schema" || code === "invalid_parameter" || status === 422) return { title: "One of the settings wasn't accepted.", detail };
    if (code === "internal_error" || status === 500) return { title: "Something went wrong on the server.", detail: "Please try again." };
    return { title: "The request failed.", detail };
  }

  let sending = false; // reading attachments, before the turn exists
  async function send(extraRequire = []) {
    if (turn || sending) return;
    sending = true;
    try {
      await startTurn(extraRequire);
    } finally {
      sending = false;
    }
  }

  async function startTurn(extraRequire) {
    const text = ui.prompt.value.trim();
    if (!text && !attachments.length) { ui.prompt.focus(); return; }
    if (conn !== "ready" || !ws) {
      toast(conn === "loading" ? "The model is still loading — your message is kept." : "Not connected yet — your message is kept.");
      return;
    }
    const atts = attachments;
    const names = [];
    const content = [];
    if (text) { content.push({ type: "text", text }); names.push(null); }
    let parts;
    try {
      parts = await Promise.all(atts.map(contentPart));
    } catch (err) {
      systemNotice("A file couldn't be read by the browser.", String(err && err.message || err));
      return;
    }
    parts.forEach((p, i) => { content.push(p); names.push(atts[i].file.name || LABEL[atts[i].modality]); });

    const outputs = settings.outputs;
    const allowed = MEDIA.filter((m) => outputs[m] !== "off" || extraRequire.includes(m));
    const required = MEDIA.filter((m) => outputs[m] === "always" || extraRequire.includes(m));
    const req = {
      type: "chat.request",
      request_id: uid(),
      messages: [{ role: "user", content }],
      modalities: ["text", ...allowed],
      required_modalities: required,
      media_format: "b64_json",
    };
    const num = (v, int = false) => {
      if (v === "" || v == null) return undefined;
      const n = int ? parseInt(v, 10) : Number(v);
      return Number.isFinite(n) ? n : undefined;
    };
    const temperature = num(settings.temperature);
    const maxTokens = num(settings.max_tokens, true);
    const seed = num(settings.seed, true);
    if (temperature !== undefined) req.temperature = temperature;
    if (maxTokens !== undefined) req.max_tokens = maxTokens;
    if (seed !== undefined) req.seed = seed;
    const common = {};
    const steps = num(settings.steps, true);
    const guidance = num(settings.guidance);
    if (steps !== undefined) common.num_inference_steps = steps;
    if (guidance !== undefined) common.guidance_scale = guidance;
    const perModality = {
      image: { ...common },
      audio: { ...common, audio_length_in_s: num(settings.audio_length) },
      video: { ...common, num_frames: num(settings.frames, true) },
    };
    for (const m of allowed) {
      const o = Object.fromEntries(Object.entries(perModality[m]).filter(([, v]) => v !== undefined));
      if (Object.keys(o).length) req[m] = o;
    }

    userMessage(text, atts);
    attachments = [];
    renderTray();
    ui.prompt.value = "";
    autosize();
    launch(req, names);
  }

  /** A new assistant turn for `req` (a first try, or "Try again" after an error). */
  function launch(req, names) {
    const view = assistantMessage();
    turn = { id: req.request_id, req, view, names, required: req.required_modalities || [], text: "", outputs: {},
      started: performance.now(), stopping: false, stopTimer: 0 };
    setBusy(true);
    follow(true);
    if (!sendJson(req)) failTurn({ code: "connection_lost" });
  }

  const RETRYABLE = new Set(["queue_full", "not_ready", "deadline_exceeded", "connection_lost", "internal_error"]);

  function setBusy(busy) {
    ui.send.hidden = busy;
    ui.stop.hidden = !busy;
    ui.stop.disabled = false;
    ui.app.dataset.busy = busy ? "true" : "false";
    if (conn === "ready") ui.conn.textContent = busy ? "Answering…" : "Ready";
    updateSend();
  }

  function updateSend() {
    const hasContent = ui.prompt.value.trim() !== "" || attachments.length > 0;
    ui.send.disabled = !hasContent || conn !== "ready";
  }

  function ours(msg) {
    return turn && (!msg.request_id || msg.request_id === turn.id);
  }

  function onServerMessage(msg) {
    switch (msg.type) {
      case "text.delta": {
        if (!ours(msg)) return;
        const delta = msg.text ?? msg.delta ?? msg.content ?? "";
        if (!delta) return;
        turn.view.typing.hidden = true;
        turn.text += delta;
        turn.view.textEl.append(document.createTextNode(delta));
        follow();
        return;
      }
      case "media.progress": {
        if (!ours(msg)) return;
        const card = mediaCard(msg.modality);
        const total = Math.max(1, msg.total | 0);
        const step = Math.min(total, Math.max(0, msg.step | 0));
        card.bar.style.width = `${(100 * step) / total}%`;
        card.progress.setAttribute("aria-valuenow", String(step));
        card.progress.setAttribute("aria-valuemax", String(total));
        card.progress.setAttribute("aria-valuetext", `step ${step} of ${total}`);
        card.sub.textContent = `${step} / ${total} steps`;
        if (msg.preview) {
          if (!card.preview) {
            card.preview = el("img", { class: "preview", alt: "" });
            card.stage.prepend(card.preview);
          }
          card.preview.src = msg.preview;
        }
        return;
      }
      case "media.done": {
        if (!ours(msg)) return;
        mediaDone(msg);
        return;
      }
      case "media.failed":
      case "media.error": {
        if (!ours(msg)) return;
        mediaFailed(msg.modality, msg.reason || (msg.error && msg.error.message) || "it could not be produced");
        return;
      }
      case "done": {
        if (!ours(msg)) return;
        finishTurn(msg);
        return;
      }
      case "error": {
        const err = { status: msg.status, ...(msg.error || msg) };
        if (turn && ours(msg)) {
          if (turn.stopping && /cancel/.test(err.code || "")) finishTurn({ finish_reason: "cancelled" });
          else failTurn(err);
        } else if (!turn && !msg.request_id) {
          const f = friendly(err); // about no request of ours (a stale one's error is dropped)
          systemNotice(f.title, f.detail);
        }
        return;
      }
      case "session.created": {
        if (msg.model) ui.modelName.textContent = msg.model;
        return;
      }
      default:
        return; // newer server messages this page does not know: ignore
    }
  }

  function mediaCard(modality) {
    if (turn.outputs[modality]) return turn.outputs[modality];
    turn.view.typing.hidden = true;
    const bar = el("div", { class: "progress-bar" });
    const progress = el("div", {
      class: "progress", role: "progressbar", "aria-label": `${LABEL[modality]} generation`,
      "aria-valuemin": "0", "aria-valuemax": "1", "aria-valuenow": "0",
    }, bar);
    const sub = el("span", { class: "media-sub", text: "starting…" });
    const title = el("span", { class: "media-title", text: LABEL[modality] || modality });
    const stage = el("div", { class: "media-stage" }, el("div", { class: "shimmer" }));
    const meta = el("div", { class: "media-meta" }, icon(modality), title, sub);
    const card = el("figure", { class: `media-card ${modality} pending`, "data-modality": modality, style: "margin:0" }, stage, progress, meta);
    turn.view.grid.hidden = false;
    // keep a stable order: image, video, then audio full-width
    const order = { image: 0, video: 1, audio: 2 };
    const after = [...turn.view.grid.children].find((c) => order[c.dataset.modality] > order[modality]);
    turn.view.grid.insertBefore(card, after || null);
    const entry = { card, stage, bar, progress, sub, title, meta, preview: null };
    turn.outputs[modality] = entry;
    follow();
    return entry;
  }

  function dataUrlToBlob(url) {
    const comma = url.indexOf(",");
    const head = url.slice(5, comma);
    const mime = head.split(";")[0] || "application/octet-stream";
    const b64 = head.includes(";base64");
    const raw = b64 ? atob(url.slice(comma + 1)) : decodeURIComponent(url.slice(comma + 1));
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return new Blob([bytes], { type: mime });
  }

  function mediaDone(msg) {
    const modality = msg.modality;
    const entry = mediaCard(modality);
    let src = msg.url || msg.data_url || msg.data || "";
    let mime = msg.mime || msg.mime_type || msg.content_type || "";
    if (src.startsWith("data:")) {
      try {
        const blob = dataUrlToBlob(src);
        mime = mime || blob.type;
        src = objectUrl(blob);
      } catch { /* use the data URL as it is */ }
    } else if (src && !/^(https?:|blob:)/.test(src)) {
      src = new URL(src, location.href).href;
    }
    const ext = OUTPUT_EXT[mime] || { image: "png", audio: "wav", video: "mp4" }[modality] || "bin";
    const filename = `nextgpt-${modality}-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-")}.${ext}`;
    let media;
    const alt = `Generated ${modality}`;
    if (modality === "image") {
      media = el("img", { src, alt, decoding: "async" });
      media.addEventListener("load", () => { if (media.naturalWidth < 160) media.classList.add("pixel"); follow(); }, { once: true });
    } else if (modality === "video") {
      media = el("video", { src, controls: true, muted: true, loop: true, autoplay: true, playsInline: true, preload: "auto", "aria-label": alt });
      media.addEventListener("loadedmetadata", () => { if (media.videoWidth < 160) media.classList.add("pixel"); follow(); }, { once: true });
    } else {
      media = el("audio", { src, controls: true, preload: "auto", "aria-label": alt });
    }
    entry.stage.replaceChildren(media);
    entry.progress.remove();
    entry.card.classList.remove("pending");
    entry.card.classList.add("ready");
    entry.title.textContent = LABEL[modality] || modality;
    entry.sub.remove();
    entry.meta.append(el("a", { class: "dl", href: src, download: filename, "aria-label": `Download ${modality}` }, icon("download"), el("span", { text: "Download" })));
    follow();
  }

  function mediaFailed(modality, reason) {
    const entry = mediaCard(modality);
    entry.card.classList.remove("pending");
    entry.card.classList.add("failed");
    entry.stage.replaceChildren(el("span", { text: capitalize(String(reason)) }));
    entry.progress.remove();
    entry.title.textContent = `No ${modality}`;
    entry.meta.querySelector(".ico").replaceWith(icon("alert"));
    entry.sub.textContent = "";
  }

  function endTurnView() {
    const v = turn.view;
    clearTimeout(turn.stopTimer);
    v.li.classList.remove("streaming");
    v.li.removeAttribute("aria-busy");
    v.typing.hidden = true;
    // outputs still waiting when the turn ended will not come
    for (const [m, entry] of Object.entries(turn.outputs)) {
      if (entry.card.classList.contains("pending")) {
        if (turn.stopping) {
          entry.card.classList.remove("pending");
          entry.card.classList.add("failed");
          entry.stage.replaceChildren(el("span", { text: "Stopped before it was finished." }));
          entry.progress.remove();
          entry.title.textContent = `${LABEL[m]} stopped`;
          entry.sub.textContent = "";
        } else mediaFailed(m, "It was not produced.");
      }
    }
    if (!turn.text) v.textEl.remove();
    const t = turn;
    turn = null;
    setBusy(false);
    return t;
  }

  function copyButton(text) {
    return el("button", {
      type: "button", class: "icon-btn", "aria-label": "Copy text", title: "Copy text",
      onclick: async (ev) => {
        try { await navigator.clipboard.writeText(text); toast("Copied", 1200); } catch { toast("Copying isn't allowed here"); }
        ev.currentTarget.blur();
      },
    }, icon("copy"));
  }

  function finishTurn(msg) {
    if (!turn) return;
    const reason = msg.finish_reason || (msg.choices && msg.choices[0] && msg.choices[0].finish_reason) || "stop";
    const cancelled = turn.stopping || /cancel/.test(reason);
    const skipped = msg.skipped_modalities || msg.skipped || {};
    for (const [m, why] of Object.entries(skipped)) {
      const started = turn.outputs[m] && turn.outputs[m].card.classList.contains("pending");
      if (started || (turn.required.includes(m) && !turn.outputs[m])) mediaFailed(m, why);
    }
    const t = endTurnView();
    const v = t.view;
    const secs = (performance.now() - t.started) / 1000;
    const usage = msg.usage || {};
    const tokens = usage.completion_tokens;
    if (cancelled) {
      v.li.classList.add("cancelled");
      v.foot.append(el("span", { class: "badge stopped" }, icon("stop"), el("span", { text: "Stopped" })));
    } else if (reason === "length") {
      v.foot.append(el("span", { class: "badge", text: "Reached the token limit" }));
    }
    if (t.text) v.foot.append(copyButton(t.text));
    v.foot.append(el("span", { class: "stats", text: `${fmtSecs(secs)}${tokens ? ` · ${tokens} tokens` : ""}` }));
    if (!t.text && !Object.keys(t.outputs).length && !cancelled) v.notes.append(noticeEl("No answer this time.", "The model ended its turn without saying anything. Try rephrasing.", "info"));
    follow();
  }

  function failTurn(err) {
    if (!turn) return;
    const names = turn.names;
    const t = endTurnView();
    const f = friendly(err, names);
    let action = null;
    if (err.code === "invalid_api_key" || err.status === 401) {
      action = el("button", { type: "button", class: "btn btn-small", onclick: openSettings, text: "Open settings" });
    } else if (RETRYABLE.has(err.code) || [429, 500, 503, 504].includes(err.status)) {
      action = el("button", {
        type: "button", class: "btn btn-small retry", text: "Try again",
        onclick: (ev) => {
          if (turn || conn !== "ready") { toast(turn ? "Wait for the answer, or press Stop" : "Not connected yet"); return; }
          ev.currentTarget.disabled = true;
          launch({ ...t.req, request_id: uid() }, names);
        },
      });
    }
    t.view.li.classList.add("errored");
    t.view.notes.append(noticeEl(f.title, f.detail, "error", action));
    follow();
  }

  function stop() {
    if (!turn || turn.stopping) return;
    turn.stopping = true;
    ui.stop.disabled = true;
    ui.conn.textContent = "Stopping…";
    if (!sendJson({ type: "cancel", request_id: turn.id })) { finishTurn({ finish_reason: "cancelled" }); }
    // if the server never answers the cancel, do not leave the page stuck
    const t = turn;
    if (t) t.stopTimer = setTimeout(() => { if (turn === t) finishTurn({ finish_reason: "cancelled" }); }, 8000);
  }

  function newConversation() {
    if (turn) {
      sendJson({ type: "cancel", request_id: turn.id });
      turn.stopping = true;
      endTurnView();
    }
    sendJson({ type: "reset" });
    ui.messages.replaceChildren();
    for (const u of objectUrls) if (!attachments.some((a) => a.url === u)) { URL.revokeObjectURL(u); objectUrls.delete(u); }
    syncEmpty();
    serverForgot = false;
    ui.prompt.value = "";
    autosize();
    updateSend();
    ui.prompt.focus();
    toast("New conversation", 1400);
  }

  // ------------------------------------------------------------------ wiring

  ui.composer.addEventListener("submit", (ev) => { ev.preventDefault(); send(); });
  ui.prompt.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && !ev.altKey && !ev.ctrlKey && !ev.metaKey) {
      ev.preventDefault();
      if (turn) { toast("Wait for the answer, or press Stop"); return; }
      send();
    }
  });
  ui.prompt.addEventListener("input", () => { autosize(); updateSend(); });
  ui.stop.addEventListener("click", stop);
  ui.newChat.addEventListener("click", newConversation);
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") {
      if (!ui.settings.hidden) closeSettings();
      else if (turn) stop();
    }
  });
  for (const s of document.querySelectorAll(".suggestion")) {
    s.addEventListener("click", () => {
      ui.prompt.value = s.dataset.prompt;
      autosize();
      updateSend();
      if (s.dataset.attach) { ui.fileInput.click(); ui.prompt.focus(); return; }
      send(s.dataset.require ? [s.dataset.require] : []);
    });
  }

  // a small handle for tests and for curious people in the console
  window.nextgpt = {
    get socket() { return ws; },
    get busy() { return !!turn; },
    get connection() { return conn; },
    settings: () => ({ ...settings }),
  };

  renderSettings();
  syncEmpty();
  renderTray();
  autosize();
  checkReady();
  if (!matchMedia("(pointer: coarse)").matches) ui.prompt.focus(); // no surprise keyboard on phones
})();
