// WCAG contrast of every visible text under the elements matching `scope` (a CSS selector list).
// A text is an element's own non-blank text node, or a textarea's / input's value. Its background
// is the first opaque background-color up the ancestors, with the translucent ones above it laid
// over it; its colour is faded by the ancestors' opacity. Colours go through a canvas, so any CSS
// colour syntax (rgb, color(), oklch) is read the same way. Returns {checked, failures}.
(scope) => {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 1;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const rgba = (css) => {
    ctx.clearRect(0, 0, 1, 1);
    ctx.fillStyle = "#000";
    ctx.fillStyle = css;
    ctx.fillRect(0, 0, 1, 1);
    const d = ctx.getImageData(0, 0, 1, 1).data;
    return [d[0], d[1], d[2], d[3] / 255];
  };
  const over = (top, under) => top.slice(0, 3).map((v, i) => v * top[3] + under[i] * (1 - top[3])).concat([1]);
  const background = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = rgba(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) layers.push(c);
      if (c[3] >= 1) break;
    }
    let bg = [255, 255, 255, 1]; // the canvas under a page that paints nothing
    for (const layer of layers.reverse()) bg = over(layer, bg);
    return bg;
  };
  const opacity = (el) => {
    let o = 1;
    for (let e = el; e; e = e.parentElement) o *= +getComputedStyle(e).opacity;
    return o;
  };
  const luminance = (c) => {
    const [r, g, b] = c.slice(0, 3).map((v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const ownText = (el) => {
    if (el.tagName === "TEXTAREA" || el.tagName === "INPUT") return el.value.trim();
    return [...el.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent.trim()).join(" ").trim();
  };
  const checked = [];
  const failures = [];
  const elements = new Map(); // element -> the scope element it was found under (its id, else its class)
  for (const root of document.querySelectorAll(scope)) {
    const name = root.id || String(root.className);
    for (const el of [root, ...root.querySelectorAll("*")]) if (!elements.has(el)) elements.set(el, name);
  }
  for (const [el, where] of elements) {
    if (["SCRIPT", "STYLE", "TEMPLATE"].includes(el.tagName) || el.closest("svg")) continue;
    const text = ownText(el);
    const box = el.getBoundingClientRect();
    if (!text || !box.width || !box.height) continue;
    if (!el.checkVisibility({ opacityProperty: true, visibilityProperty: true })) continue;
    const bg = background(el);
    const fg = rgba(getComputedStyle(el).color);
    fg[3] *= opacity(el);
    const [hi, lo] = [luminance(over(fg, bg)), luminance(bg)].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const item = {
      where, tag: el.tagName, text: text.slice(0, 40), ratio: Math.round(ratio * 100) / 100,
      color: getComputedStyle(el).color, background: `rgb(${bg.slice(0, 3).map(Math.round).join(", ")})`,
    };
    checked.push(item);
    if (ratio < 4.5) failures.push(item);
  }
  return { checked, failures };
}
