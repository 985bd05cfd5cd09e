// The page: a picture in, POST /generate?embed=png,step,stl, the program, its render, a 3D view
// and the files out. Either everything of an answer is shown, or nothing of it and one message.
// The search's next-best programs can be looked at too: each is built through POST /files on demand.
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const input = $("file"), drop = $("drop");
  const statusBox = $("status"), statusText = $("status-text"), errorBox = $("error"), result = $("result");
  const viewer = new window.MeshViewer($("view"));
  const TYPES = ["image/png", "image/jpeg"];
  const ALTERNATIVES = 3;  // next-best programs asked for: each can be looked at and downloaded
  let limits = null, busy = false, objectUrls = [], candidates = [];

  fetch("/page/limits").then((r) => (r.ok ? r.json() : null)).then((l) => { limits = l; }).catch(() => {});
  window.addEventListener("resize", () => { viewer.dirty = true; });

  function megabytes(n) { return (n / 2 ** 20).toFixed(n < 2 ** 20 ? 2 : 0) + " MB"; }

  function showError(message) {
    clearResult();
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function clearResult() {
    result.hidden = true;
    viewer.clear();
    for (const url of objectUrls) URL.revokeObjectURL(url);
    objectUrls = [];
    for (const id of ["picture", "render"]) $(id).removeAttribute("src");
    $("program").textContent = "";
    candidates = [];
    $("alternatives").replaceChildren();
    delete document.body.dataset.shown;
    for (const kind of ["py", "step", "stl"]) {
      const link = $("download-" + kind);
      link.removeAttribute("href");
      link.setAttribute("aria-disabled", "true");
    }
    document.body.dataset.state = "idle";
  }

  function setBusy(on, text) {
    busy = on;
    input.disabled = on;
    for (const radio of document.querySelectorAll("#mode input")) radio.disabled = on;
    drop.setAttribute("aria-busy", on ? "true" : "false");
    statusBox.hidden = !on;
    if (text) statusText.textContent = text;
  }

  function blobUrl(blob) {
    const url = URL.createObjectURL(blob);
    objectUrls.push(url);
    return url;
  }

  function bytesOf(base64) {
    const text = atob(base64), out = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }

  function stem(name) {
    const base = (name || "part").replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9._-]+/g, "_");
    return base || "part";
  }

  function pictureSize(file) {
    return new Promise((resolve) => {
      const url = URL.createObjectURL(file), image = new Image();
      image.onload = () => { resolve([image.naturalWidth, image.naturalHeight]); URL.revokeObjectURL(url); };
      image.onerror = () => { resolve(null); URL.revokeObjectURL(url); };
      image.src = url;
    });
  }

  async function refusal(response) {
    let detail = "";
    try { detail = (await response.json()).detail; } catch (e) { /* not JSON */ }
    if (typeof detail !== "string") detail = JSON.stringify(detail);
    switch (response.status) {
      case 400: return "The server could not use this picture: " + detail;
      case 413: return "The picture is too large for the server" +
        (limits ? ` (at most ${megabytes(limits.max_image_bytes)})` : "") + ". Please send a smaller one.";
      case 503: {
        const retry = response.headers.get("Retry-After");
        if (retry) return `The server is busy right now; please try again in ${retry} s.`;
        return "The server cannot do this now: " + detail;
      }
      case 504: return "The server took too long to answer; please try again (Fast is quicker than Best).";
      default: return `The server answered ${response.status}: ${detail || response.statusText}`;
    }
  }

  async function run(file) {
    if (busy) return;
    errorBox.hidden = true;
    clearResult();
    if (!file) return;
    const type = file.type || (/\.png$/i.test(file.name) ? "image/png" : /\.jpe?g$/i.test(file.name) ? "image/jpeg" : "");
    if (!TYPES.includes(type)) {
      showError(`“${file.name}” is not a PNG or JPEG picture. Please choose a .png or .jpg file.`);
      return;
    }
    if (limits && file.size > limits.max_image_bytes) {
      showError(`The picture is ${megabytes(file.size)}; the server takes at most ${megabytes(limits.max_image_bytes)}.`);
      return;
    }
    const size = await pictureSize(file);
    if (!size) { showError(`“${file.name}” could not be read as a picture.`); return; }
    if (limits && (size[0] * size[1] > limits.max_image_pixels || Math.max(size[0], size[1]) > limits.max_image_side)) {
      showError(`The picture is ${size[0]} × ${size[1]} pixels; the server takes at most ${limits.max_image_side} per side.`);
      return;
    }
    const best = document.querySelector("#mode input:checked").value === "best";
    // Fast: /generate's default search; both answer the search's next-best programs too
    const query = "embed=png,step,stl&alternatives=" + ALTERNATIVES + (best ? "&candidates=8&refine=8" : "");
    const form = new FormData();
    form.append("image", file, file.name);
    const started = performance.now();
    const words = best ? "Searching for the best program" : "Searching";
    setBusy(true, words + "…");
    document.body.dataset.state = "working";
    const timer = setInterval(() => {
      statusText.textContent = `${words}… ${Math.round((performance.now() - started) / 1000)} s`;
    }, 500);
    try {
      let response;
      try {
        response = await fetch("/generate?" + query, { method: "POST", body: form });
      } catch (e) {
        showError("Could not reach the server. Is it still running?");
        return;
      }
      if (!response.ok) { showError(await refusal(response)); return; }
      const answer = await response.json();
      show(file, answer, (performance.now() - started) / 1000);
    } catch (e) {
      showError("Something went wrong while showing the answer: " + e.message);
    } finally {
      clearInterval(timer);
      setBusy(false);
      input.value = "";
    }
  }

  function show(file, answer, seconds) {
    // everything is prepared first; the section appears only once all of it is in place
    const name = stem(file.name);
    $("picture").src = blobUrl(file);
    $("warning").textContent = answer.warning ? "Note: " + answer.warning + "." : "";
    $("warning").hidden = !answer.warning;
    candidates = [{ name, label: "kept", program: answer.program, valid: answer.valid, error: answer.error,
                    source: answer.source || "greedy (the model's first choice)", agreement: answer.agreement,
                    files: answer.files || {} }];
    (answer.alternatives || []).forEach((other, k) => candidates.push({
      name: `${name}.alt${k + 1}`, label: `next-best ${k + 1}`, program: other.program, valid: true, error: null,
      source: other.source, agreement: other.agreement, files: null }));  // files: asked for when looked at
    const choices = $("alternatives");
    choices.replaceChildren();
    candidates.forEach((candidate, k) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "choice";
      button.textContent = candidate.label;
      button.title = candidate.source;
      button.addEventListener("click", () => look(k));
      choices.append(button);
    });
    if (candidates.length < 2) choices.textContent = "—";
    showCandidate(0);
    result.hidden = false;
    document.body.dataset.state = "done";
    document.body.dataset.seconds = seconds.toFixed(1);
  }

  // one of the search's candidates in the render, the 3D view, the program and the downloads
  function showCandidate(k) {
    const candidate = candidates[k], files = candidate.files;
    viewer.clear();
    if (files.stl) viewer.load(bytesOf(files.stl).buffer);
    if (files.png) $("render").src = "data:image/png;base64," + files.png;
    else $("render").removeAttribute("src");
    $("program").textContent = candidate.program;
    const valid = $("valid");
    valid.textContent = candidate.valid ? "yes" : "no — " + (candidate.error || "unknown error");
    valid.className = candidate.valid ? "good" : "bad";
    $("agreement").textContent = candidate.agreement == null ? "—" : candidate.agreement.toFixed(3);
    $("source").textContent = candidate.source;
    $("alternatives").querySelectorAll("button").forEach((button, j) => button.setAttribute("aria-pressed", String(j === k)));
    const links = { py: new Blob([candidate.program], { type: "text/x-python" }) };
    if (files.step) links.step = new Blob([bytesOf(files.step)], { type: "application/step" });
    if (files.stl) links.stl = new Blob([bytesOf(files.stl)], { type: "model/stl" });
    for (const kind of ["py", "step", "stl"]) {
      const link = $("download-" + kind);
      if (links[kind]) {
        link.href = blobUrl(links[kind]);
        link.download = `${candidate.name}.${kind}`;
        link.removeAttribute("aria-disabled");
      } else {
        link.removeAttribute("href");
        link.setAttribute("aria-disabled", "true");
      }
    }
    document.body.dataset.shown = candidate.label;
    errorBox.hidden = candidate.valid;
    if (!candidate.valid) errorBox.textContent = "The program was written but builds no solid, so there is no render, 3D view or CAD file.";
  }

  // a next-best program is built in the server's sandbox the first time it is looked at
  async function look(k) {
    if (busy) return;
    const candidate = candidates[k];
    errorBox.hidden = true;
    if (!candidate.files) {
      setBusy(true, `Building the ${candidate.label} program…`);
      try {
        let response;
        try {
          response = await fetch("/files?embed=png,step,stl", {
            method: "POST", headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ program: candidate.program }) });
        } catch (e) {
          errorBox.textContent = "Could not reach the server. Is it still running?";
          errorBox.hidden = false;
          return;
        }
        if (!response.ok) {
          errorBox.textContent = await refusal(response);
          errorBox.hidden = false;
          return;
        }
        candidate.files = (await response.json()).files;
      } finally {
        setBusy(false);
      }
    }
    showCandidate(k);
  }

  input.addEventListener("change", () => run(input.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length > 1) { showError("Please drop one picture at a time."); return; }
    run(e.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });

  $("copy").addEventListener("click", async () => {
    const text = $("program").textContent, button = $("copy");
    try {
      await navigator.clipboard.writeText(text);
    } catch (e) {
      const range = document.createRange();
      range.selectNodeContents($("program"));
      const selection = window.getSelection();
      selection.removeAllRanges(); selection.addRange(range);
      document.execCommand("copy");
    }
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  });
})();
