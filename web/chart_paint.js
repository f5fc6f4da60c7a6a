// Drawing primitives of web/chart.js: nice ticks and their labels, axes, series (points, lines,
// bars) and rings, on a 2D canvas context scaled to CSS pixels.

export const FONT_PX = 11;

/** A tick step near span / target: 1, 2 or 5 × 10^k, switching at the geometric means (√2, √10, √50)
 *  so the tick count is as close to the target as these steps allow; at least 1 when `integer`. */
export function niceStep(span, target, integer = false) {
  const raw = Math.abs(span) / Math.max(1, target) || 1;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  const step = (norm >= Math.sqrt(50) ? 10 : norm >= Math.sqrt(10) ? 5 : norm >= Math.SQRT2 ? 2 : 1) * mag;
  return integer ? Math.max(1, Math.round(step)) : step;
}

/** The multiples of a nice step inside [lo, hi], at least two of them while the step can shrink
 *  (rounded, so 0.1 + 0.2 prints as 0.3): {step, values}. */
export function niceTicks(lo, hi, target, integer = false) {
  for (let t = target; ; t *= 2) {
    const step = niceStep(hi - lo, t, integer);
    const digits = decimals(step);
    const values = [];
    for (let k = Math.ceil(lo / step - 1e-9); k * step <= hi + step * 1e-9; k++) values.push(+(k * step).toFixed(digits));
    if (values.length >= 2 || t > 64 || (integer && step === 1)) return {step, values};
  }
}

function decimals(step) {
  return Math.max(0, Math.ceil(-Math.log10(step) - 1e-9));
}

/** A tick label with the decimals its step needs; format "pct" shows 0.25 as 25%. */
export function tickLabel(value, step, format) {
  const pct = format === "pct";
  const digits = decimals(pct ? step * 100 : step);
  const text = (pct ? value * 100 : value).toLocaleString("en-US", {minimumFractionDigits: digits, maximumFractionDigits: digits});
  return pct ? `${text}%` : text;
}

/** Category labels under each band: level when they fit, else rotated 45° (every k-th one if crowded). */
export function categoryTicks(ctx, names, band) {
  const widths = names.map((n) => ctx.measureText(n).width);
  const widest = Math.max(0, ...widths);
  if (widest <= band - 4) return {xTicks: names.map((n, i) => [i, n]), xLabelHeight: FONT_PX + 8};
  const every = Math.max(1, Math.ceil(16 / band));
  const room = 120; // the longest rotated label, in px along its slant
  return {
    xTicks: names.map((n, i) => [i, fitText(ctx, n, room)]).filter((_, i) => i % every === 0),
    xLabelHeight: Math.min(room, widest) * Math.SQRT1_2 + FONT_PX + 6, rotated: true,
  };
}

function fitText(ctx, text, room) {
  if (ctx.measureText(text).width <= room) return text;
  let out = text;
  while (out.length > 1 && ctx.measureText(`${out}…`).width > room) out = out.slice(0, -1);
  return `${out}…`;
}

export function drawAxes(ctx, f, axes, ink) {
  ctx.strokeStyle = ink.grid;
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (const [v] of f.yTicks) { const y = Math.round(f.sy(v)) + 0.5; ctx.moveTo(f.l, y); ctx.lineTo(f.r, y); }
  if (!axes.x.category) for (const [v] of f.xTicks) { const x = Math.round(f.sx(v)) + 0.5; ctx.moveTo(x, f.t); ctx.lineTo(x, f.b); }
  ctx.stroke();
  ctx.strokeStyle = ink.text;
  ctx.beginPath();
  ctx.moveTo(f.l + 0.5, f.t);
  ctx.lineTo(f.l + 0.5, Math.round(f.b) + 0.5);
  ctx.lineTo(f.r, Math.round(f.b) + 0.5);
  ctx.stroke();
  ctx.fillStyle = ink.text;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const [v, label] of f.yTicks) ctx.fillText(label, f.l - 6, f.sy(v));
  for (const [v, label] of f.xTicks) {
    const x = f.sx(v);
    if (f.rotated) {
      ctx.save();
      ctx.translate(x, f.b + 6);
      ctx.rotate(-Math.PI / 4);
      ctx.textAlign = "right";
      ctx.fillText(label, 0, 0);
      ctx.restore();
    } else {
      const half = ctx.measureText(label).width / 2;
      ctx.textAlign = "center";
      ctx.textBaseline = "top";
      ctx.fillText(label, Math.max(half, Math.min(f.w - half - 1, x)), f.b + 5);
    }
  }
  ctx.textAlign = "center";
  if (axes.x.title) { ctx.textBaseline = "bottom"; ctx.fillText(axes.x.title, (f.l + f.r) / 2, f.b + f.xLabelHeight + 16); }
  if (axes.y.title) {
    ctx.save();
    ctx.translate(11, (f.t + f.b) / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textBaseline = "middle";
    ctx.fillText(axes.y.title, 0, 0);
    ctx.restore();
  }
}

/** Draw one series inside the plot rectangle; round markers go through `scratch` (see drawDots). */
export function drawSeries(ctx, s, f, scratch) {
  ctx.globalAlpha = s.opacity ?? 1;
  ctx.fillStyle = s.color;
  ctx.strokeStyle = s.color;
  if (s.type === "bars") {
    const half = ((f.r - f.l) / Math.max(1, s.y.length)) * 0.35;
    const base = f.sy(0);
    s.y.forEach((v, i) => { const top = f.sy(v); ctx.fillRect(f.sx(i) - half, top, half * 2, base - top); });
  } else if (s.type === "line") {
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    ctx.beginPath();
    let prev = null;
    for (let i = 0; i < s.y.length; i++) {
      const x = f.sx(s.x[i]);
      const y = f.sy(s.y[i]);
      if (!prev) ctx.moveTo(x, y);
      else if (s.shape === "hv") { ctx.lineTo(x, prev.y); ctx.lineTo(x, y); } else ctx.lineTo(x, y);
      prev = {x, y};
    }
    ctx.stroke();
  }
  ctx.globalAlpha = 1;
  if (s.type === "points" || s.markers) {
    if (s.symbol === "star") drawStars(ctx, s, f);
    else drawDots(ctx, s, f, scratch);
  }
}

/**
 * Round, antialiased markers written straight into pixels, then drawn onto `ctx` in one drawImage.
 * 10,000 canvas arcs cost 40-60 ms to build and rasterize without a GPU; this costs ~5 ms. A
 * series has one colour, so blending only adds up coverage in the alpha channel.
 */
function drawDots(ctx, s, f, scratch) {
  const dpr = ctx.getTransform().a;
  const w = Math.max(1, Math.ceil((f.r - f.l) * dpr));
  const ht = Math.max(1, Math.ceil((f.b - f.t) * dpr));
  const img = new ImageData(w, ht);
  const px = img.data;
  const [red, green, blue] = rgb(s.color);
  const alpha = s.opacity ?? 1;
  const r = ((s.size || 6) / 2) * dpr;
  const reach = Math.ceil(r + 0.5);
  for (let i = 0; i < s.y.length; i++) {
    const cx = (f.sx(s.x[i]) - f.l) * dpr;
    const cy = (f.sy(s.y[i]) - f.t) * dpr;
    if (!(cx > -reach && cx < w + reach && cy > -reach && cy < ht + reach)) continue;
    const x0 = Math.max(0, Math.floor(cx - reach));
    const x1 = Math.min(w - 1, Math.ceil(cx + reach));
    const y1 = Math.min(ht - 1, Math.ceil(cy + reach));
    for (let y = Math.max(0, Math.floor(cy - reach)); y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        // the share of the pixel inside the disc, approximated by its centre's distance to the edge
        const cover = r + 0.5 - Math.hypot(x + 0.5 - cx, y + 0.5 - cy);
        if (cover <= 0) continue;
        const k = (y * w + x) * 4;
        const a = alpha * Math.min(1, cover);
        px[k] = red;
        px[k + 1] = green;
        px[k + 2] = blue;
        px[k + 3] = 255 - (255 - px[k + 3]) * (1 - a);
      }
    }
  }
  scratch.width = w;
  scratch.height = ht;
  scratch.getContext("2d").putImageData(img, 0, 0);
  ctx.drawImage(scratch, f.l, f.t, w / dpr, ht / dpr);
}

/** "#4c78a8" → [76, 120, 168]. */
function rgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function drawStars(ctx, s, f) {
  const r = (s.size || 6) / 2;
  ctx.beginPath();
  for (let i = 0; i < s.y.length; i++) star(ctx, f.sx(s.x[i]), f.sy(s.y[i]), r);
  ctx.fillStyle = s.color;
  ctx.fill();
  ctx.strokeStyle = "#333";
  ctx.lineWidth = 1;
  ctx.stroke();
}

function star(ctx, x, y, r) {
  for (let k = 0; k < 10; k++) {
    const a = -Math.PI / 2 + (k * Math.PI) / 5;
    const d = k % 2 ? r * 0.45 : r;
    ctx[k ? "lineTo" : "moveTo"](x + d * Math.cos(a), y + d * Math.sin(a));
  }
  ctx.closePath();
}

export function ring(ctx, p, r, color, width) {
  ctx.strokeStyle = color;
  ctx.lineWidth = width;
  ctx.beginPath();
  ctx.arc(p.x, p.y, r, 0, 2 * Math.PI);
  ctx.stroke();
}
