// Small DOM helpers. Text always goes in as text nodes: names from the API are never HTML.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style") {
      // through the CSSOM: the page's Content-Security-Policy refuses style attributes
      for (const [property, setting] of Object.entries(value)) {
        el.style.setProperty(property, setting);
      }
    }
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "value" && "value" in el) el.value = value;
    else if (key === "checked" && "checked" in el) el.checked = Boolean(value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** An HTML element: h("td", {class: "num"}, "42"). */
export function h(tag, attrs = {}, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element. */
export function s(tag, attrs = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

const integers = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const decimals = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });

/** 12,345 */
export function formatCount(n) {
  return integers.format(n);
}

/** 12,345.67 (at most two decimals) */
export function formatNumber(n) {
  return decimals.format(n);
}

/** 0.5951 -> "59.5%" */
export function formatPercent(p) {
  if (typeof p !== "number" || !Number.isFinite(p)) return "–";
  return `${(p * 100).toFixed(1)}%`;
}

/** A number shown with more digits (yes, no, likelihood). */
export function formatRatio(x) {
  if (typeof x !== "number" || !Number.isFinite(x)) return "–";
  if (x === 0) return "0";
  return Math.abs(x) >= 0.001 ? String(Number(x.toPrecision(4))) : x.toExponential(2);
}
