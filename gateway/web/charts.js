// Charts drawn as inline SVG, sized to their container (and redrawn when it resizes).
import { clear, h, s } from "./dom.js";

const SERIES = 8; // colours --s0 ... --s7 in style.css

const drawers = new WeakMap();
const widths = new WeakMap();
const observer =
  typeof ResizeObserver === "function"
    ? new ResizeObserver((entries) => {
        for (const entry of entries) {
          const width = Math.round(entry.contentRect.width);
          if (width > 0 && width !== widths.get(entry.target)) {
            const draw = drawers.get(entry.target);
            if (draw) draw();
          }
        }
      })
    : null;

function mount(container, draw) {
  drawers.set(container, draw);
  if (observer) observer.observe(container);
  draw();
}

function widthOf(container) {
  const width = Math.round(container.clientWidth) || 600;
  widths.set(container, width);
  return width;
}

function truncate(text, max) {
  return text.length > max ? `${text.slice(0, Math.max(1, max - 1))}…` : text;
}

/** A chart's SVG root, `width` by `height` pixels, an image described by `caption`. */
function chartSvg(className, width, height, caption) {
  return s("svg", {
    class: className,
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": caption,
  });
}

/** Axis ticks from 0 over `max`: a step of 1, 2 or 5 times a power of ten (whole numbers
 * when `integer`), about `count` of them. */
export function axisTicks(max, count = 4, integer = true) {
  const raw = max > 0 ? max / count : 1 / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  let step = [1, 2, 5, 10].map((m) => m * power).find((candidate) => candidate >= raw);
  if (integer) step = Math.max(1, Math.round(step));
  const top = Math.max(step, Math.ceil(max / step - 1e-9) * step);
  const ticks = [];
  for (let value = 0; value <= top + step / 2; value += step) ticks.push(value);
  return { top, ticks };
}

/**
 * Horizontal bars: items [{label, value}], largest first as given.
 * options: {format(value) -> text, max (the full scale), caption, emptyText}
 */
export function barChart(container, items, options = {}) {
  const { format = String, max, caption = "", emptyText = "Nothing to show." } = options;
  mount(container, () => {
    clear(container);
    if (!items.length) {
      container.append(h("p", { class: "empty" }, emptyText));
      return;
    }
    const width = widthOf(container);
    const row = 28;
    const top = 4;
    const labelChars = Math.max(8, Math.min(28, Math.floor((width * 0.38) / 7.2)));
    const longest = Math.max(...items.map((i) => Math.min(i.label.length, labelChars)));
    const labelWidth = Math.min(Math.round(width * 0.4), longest * 7.2 + 12);
    const valueWidth = 64;
    const plot = Math.max(40, width - labelWidth - valueWidth);
    const scale = max ?? Math.max(...items.map((i) => i.value), 0);
    const height = top + items.length * row;
    const svg = chartSvg("bar-chart", width, height, caption);
    items.forEach((item, index) => {
      const y = top + index * row;
      const length = scale > 0 ? Math.max(item.value > 0 ? 2 : 0, (item.value / scale) * plot) : 0;
      svg.append(
        s(
          "g",
          { class: "bar-row" },
          s("title", {}, `${item.label}: ${format(item.value)}`),
          s(
            "text",
            { x: labelWidth - 8, y: y + row / 2, class: "bar-label", "text-anchor": "end" },
            truncate(item.label, labelChars),
          ),
          s("rect", {
            x: labelWidth,
            y: y + 5,
            width: plot,
            height: row - 10,
            class: "bar-track",
            rx: 3,
          }),
          s("rect", {
            x: labelWidth,
            y: y + 5,
            width: length,
            height: row - 10,
            class: "bar",
            rx: 3,
          }),
          s(
            "text",
            { x: labelWidth + length + 6, y: y + row / 2, class: "bar-value" },
            format(item.value),
          ),
        ),
      );
    });
    container.append(svg);
  });
}

/**
 * Lines over a shared x axis: labels [x0, x1, ...], series [{name, values: [..], colour?}].
 * options: {format(value), caption, partialLast}: with partialLast the last x is a period
 * still running (the current week): its segment is dashed, its dot hollow, its label
 * marked "(partial)", so a low count there reads as "so far", not as a drop.
 */
export function lineChart(container, labels, series, options = {}) {
  const { format = String, caption = "", partialLast = false } = options;
  mount(container, () => {
    clear(container);
    const width = widthOf(container);
    const height = Math.round(Math.min(320, Math.max(200, width * 0.42)));
    const margin = { left: 48, right: 16, top: 14, bottom: 34 };
    const plotW = width - margin.left - margin.right;
    const plotH = height - margin.top - margin.bottom;
    const { top, ticks } = axisTicks(Math.max(0, ...series.flatMap((line) => line.values)));
    const x = (i) =>
      margin.left + (labels.length === 1 ? plotW / 2 : (i / (labels.length - 1)) * plotW);
    const y = (v) => margin.top + plotH - (v / top) * plotH;
    const svg = chartSvg("line-chart", width, height, caption);
    for (const value of ticks) {
      svg.append(
        s("line", {
          x1: margin.left,
          x2: width - margin.right,
          y1: y(value),
          y2: y(value),
          class: "grid",
        }),
        s(
          "text",
          { x: margin.left - 6, y: y(value), class: "axis-label", "text-anchor": "end" },
          format(value),
        ),
      );
    }
    const every = Math.max(1, Math.ceil((labels.length * 64) / Math.max(plotW, 1)));
    const shown = [];
    for (let i = 0; i < labels.length; i += every) shown.push(i);
    const last = labels.length - 1;
    if (shown[shown.length - 1] !== last) {
      if (shown.length > 1 && last - shown[shown.length - 1] < every) shown.pop();
      shown.push(last);
    }
    for (const i of shown) {
      const anchor = i === last && labels.length > 1 ? "end" : "middle";
      const at = anchor === "end" ? width - 2 : x(i);
      const partial = partialLast && i === last;
      svg.append(
        s(
          "text",
          {
            x: at,
            y: height - margin.bottom + 18,
            class: partial ? "axis-label partial-label" : "axis-label",
            "text-anchor": anchor,
          },
          partial ? `${labels[i]} (partial)` : labels[i],
        ),
      );
    }
    const pointsOf = (values, from) =>
      values.map((v, i) => `${x(from + i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    series.forEach((line, index) => {
      const group = s("g", { class: "series", style: seriesStyle(line.colour ?? index) });
      const solidEnd = partialLast ? line.values.length - 1 : line.values.length;
      if (solidEnd > 1) {
        group.append(s("polyline", { points: pointsOf(line.values.slice(0, solidEnd), 0), class: "line" }));
      }
      if (partialLast && line.values.length > 1) {
        const from = line.values.length - 2;
        group.append(
          s("polyline", { points: pointsOf(line.values.slice(from), from), class: "line partial" }),
        );
      }
      line.values.forEach((v, i) => {
        const partial = partialLast && i === last;
        group.append(
          s(
            "circle",
            { cx: x(i), cy: y(v), r: 3.5, class: partial ? "dot partial" : "dot" },
            s("title", {}, `${line.name}, ${labels[i]}${partial ? " (so far)" : ""}: ${format(v)}`),
          ),
        );
      });
      svg.append(group);
    });
    container.append(svg);
  });
}

/** The style that colours an element (and what it holds: `var(--series)`) as series
 * `index`, for the `style` of h() or s(). */
export function seriesStyle(index) {
  return { "--series": `var(--s${index % SERIES})` };
}
