// A small 3D viewer for a binary STL on a 2D canvas: shaded triangles drawn back to front
// (painter's algorithm), turned by dragging, zoomed by the wheel, slowly turning until touched.
// No WebGL, no libraries. Exposes window.MeshViewer.
(function () {
  "use strict";

  function parseStl(buffer) {
    // binary STL: 80-byte header, uint32 count, then 50 bytes per triangle (normal, 3 vertices, attribute)
    const view = new DataView(buffer);
    if (buffer.byteLength < 84) throw new Error("not a binary STL");
    const count = view.getUint32(80, true);
    if (84 + count * 50 > buffer.byteLength) throw new Error("truncated STL");
    const positions = new Float32Array(count * 9);
    for (let i = 0; i < count; i++) {
      const base = 84 + i * 50 + 12;
      for (let j = 0; j < 9; j++) positions[i * 9 + j] = view.getFloat32(base + j * 4, true);
    }
    return positions;
  }

  function MeshViewer(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.positions = null;
    this.yaw = -0.7; this.pitch = 0.55; this.zoom = 1;
    this.spinning = true;
    this.frames = 0;
    this.running = false;
    this._bind();
  }

  MeshViewer.prototype.load = function (stlBuffer) {
    const p = parseStl(stlBuffer);
    let min = [Infinity, Infinity, Infinity], max = [-Infinity, -Infinity, -Infinity];
    for (let i = 0; i < p.length; i += 3) {
      for (let k = 0; k < 3; k++) { min[k] = Math.min(min[k], p[i + k]); max[k] = Math.max(max[k], p[i + k]); }
    }
    const centre = [0, 1, 2].map((k) => (min[k] + max[k]) / 2);
    const radius = Math.max(1e-9, Math.hypot(max[0] - min[0], max[1] - min[1], max[2] - min[2]) / 2);
    for (let i = 0; i < p.length; i += 3) {
      for (let k = 0; k < 3; k++) p[i + k] = (p[i + k] - centre[k]) / radius;
    }
    const n = p.length / 9;
    this.normals = new Float32Array(n * 3);
    for (let t = 0; t < n; t++) {
      const o = t * 9;
      const ux = p[o + 3] - p[o], uy = p[o + 4] - p[o + 1], uz = p[o + 5] - p[o + 2];
      const vx = p[o + 6] - p[o], vy = p[o + 7] - p[o + 1], vz = p[o + 8] - p[o + 2];
      let nx = uy * vz - uz * vy, ny = uz * vx - ux * vz, nz = ux * vy - uy * vx;
      const len = Math.hypot(nx, ny, nz) || 1;
      this.normals[t * 3] = nx / len; this.normals[t * 3 + 1] = ny / len; this.normals[t * 3 + 2] = nz / len;
    }
    this.positions = p;
    this.order = new Uint32Array(n);
    this.depth = new Float32Array(n);
    this.canvas.dataset.triangles = String(n);
    this.spinning = true;
    this.start();
  };

  MeshViewer.prototype.clear = function () {
    this.positions = null;
    this.running = false;
    this.canvas.dataset.triangles = "0";
    this.ctx.setTransform(1, 0, 0, 1, 0, 0);
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
  };

  MeshViewer.prototype.start = function () {
    if (this.running) return;
    this.running = true;
    const tick = () => {
      if (!this.running || !this.positions) { this.running = false; return; }
      if (this.spinning) this.yaw += 0.008;
      if (this.spinning || this.dirty) { this.dirty = false; this.draw(); }
      requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  };

  MeshViewer.prototype.draw = function () {
    const canvas = this.canvas, ctx = this.ctx, p = this.positions;
    if (!p) return;
    const ratio = window.devicePixelRatio || 1;
    const w = Math.round(canvas.clientWidth * ratio) || canvas.width, h = Math.round(canvas.clientHeight * ratio) || canvas.height;
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, w, h);
    // CAD convention: z up. Turn about z (yaw), then tilt towards the viewer (pitch).
    const cy = Math.cos(this.yaw), sy = Math.sin(this.yaw), cp = Math.cos(this.pitch), sp = Math.sin(this.pitch);
    const scale = 0.45 * Math.min(w, h) * this.zoom, ox = w / 2, oy = h / 2;
    const n = p.length / 9;
    const sx = new Float32Array(p.length / 3), syy = new Float32Array(p.length / 3), sz = new Float32Array(p.length / 3);
    for (let i = 0, v = 0; i < p.length; i += 3, v++) {
      const x = p[i], y = p[i + 1], z = p[i + 2];
      const x1 = cy * x - sy * y, y1 = sy * x + cy * y;          // yaw about z
      const depth = cp * y1 - sp * z, up = sp * y1 + cp * z;       // pitch: y goes into the screen
      sx[v] = ox + scale * x1; syy[v] = oy - scale * up; sz[v] = depth;
    }
    for (let t = 0; t < n; t++) { this.order[t] = t; this.depth[t] = sz[3 * t] + sz[3 * t + 1] + sz[3 * t + 2]; }
    const depthOf = this.depth;
    const order = Array.prototype.slice.call(this.order).sort((a, b) => depthOf[b] - depthOf[a]);
    const light = [-0.35, -0.55, 0.76];
    for (let k = 0; k < n; k++) {
      const t = order[k];
      const nx = this.normals[3 * t], ny = this.normals[3 * t + 1], nz = this.normals[3 * t + 2];
      // the normal in view space (same turn as the points): facing the viewer means negative depth
      const nx1 = cy * nx - sy * ny, ny1 = sy * nx + cy * ny;
      const nd = cp * ny1 - sp * nz, nu = sp * ny1 + cp * nz;
      const facing = Math.abs(light[0] * nx1 + light[1] * nd + light[2] * nu);
      const shade = 0.35 + 0.6 * facing;
      const r = Math.round(120 * shade + 20), g = Math.round(140 * shade + 25), b = Math.round(165 * shade + 30);
      const colour = `rgb(${r},${g},${b})`;
      const a = 3 * t;
      ctx.beginPath();
      ctx.moveTo(sx[a], syy[a]); ctx.lineTo(sx[a + 1], syy[a + 1]); ctx.lineTo(sx[a + 2], syy[a + 2]);
      ctx.closePath();
      ctx.fillStyle = colour; ctx.strokeStyle = colour; ctx.lineWidth = 0.6;
      ctx.fill(); ctx.stroke();
    }
    this.frames++;
    canvas.dataset.frames = String(this.frames);
  };

  MeshViewer.prototype._bind = function () {
    const canvas = this.canvas;
    let last = null;
    canvas.addEventListener("pointerdown", (e) => {
      last = [e.clientX, e.clientY]; this.spinning = false;
      canvas.setPointerCapture(e.pointerId); canvas.classList.add("dragging");
    });
    canvas.addEventListener("pointermove", (e) => {
      if (!last) return;
      this.yaw += (e.clientX - last[0]) * 0.01;
      this.pitch = Math.max(-1.55, Math.min(1.55, this.pitch + (e.clientY - last[1]) * 0.01));
      last = [e.clientX, e.clientY];
      this.dirty = true;
    });
    const end = () => { last = null; canvas.classList.remove("dragging"); };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
    canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      this.zoom = Math.max(0.3, Math.min(6, this.zoom * Math.exp(-e.deltaY * 0.0015)));
      this.dirty = true;
    }, { passive: false });
  };

  window.MeshViewer = MeshViewer;
  window.MeshViewer.parseStl = parseStl;
})();
