// Small hand-drawn SVG line charts: one per metric, a few series each, the last N samples.
// Each chart says its latest values in text too (its caption), for screen readers and phones.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 320;
const HEIGHT = 120;
const PAD = 4;
const KEEP = 60; // samples: five minutes at one every 5 s

function svg(tag, attributes) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  return element;
}

export class LineChart {
  /** A chart titled `title` in `container`; `format` turns a value into text ("1.2 s"). */
  constructor(container, title, format = (v) => String(Math.round(v * 100) / 100)) {
    this.format = format;
    this.series = new Map(); // name -> values (null = no data at that sample)
    this.figure = document.createElement("figure");
    this.figure.className = "chart";
    this.svg = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img",
                            "aria-label": title, preserveAspectRatio: "none" });
    const caption = document.createElement("figcaption");
    this.heading = document.createElement("strong");
    this.heading.textContent = title;
    this.legend = document.createElement("ul");
    this.legend.className = "legend";
    caption.append(this.heading, this.legend);
    this.figure.append(caption, this.svg);
    container.append(this.figure);
  }

  /** Add one sample per series ({name: value}); a series missing now gets a gap. */
  add(values) {
    for (const name of Object.keys(values)) {
      if (!this.series.has(name)) this.series.set(name, []);
    }
    for (const [name, points] of this.series) {
      points.push(name in values ? values[name] : null);
      if (points.length > KEEP) points.shift();
    }
    this.draw();
  }

  draw() {
    const all = [...this.series.values()].flat().filter((v) => v !== null);
    const top = Math.max(1e-9, ...all) * 1.1;
    this.svg.replaceChildren(svg("line", { x1: 0, y1: HEIGHT - PAD, x2: WIDTH, y2: HEIGHT - PAD,
                                           class: "axis" }));
    this.legend.replaceChildren();
    // The x axis spans the samples there are, so a young chart fills its width too.
    const length = Math.max(2, ...[...this.series.values()].map((points) => points.length));
    const step = WIDTH / (length - 1);
    [...this.series.entries()].forEach(([name, points], index) => {
      const offset = length - points.length;
      let path = "";
      points.forEach((value, i) => {
        if (value === null) return;
        const x = (offset + i) * step;
        const y = HEIGHT - PAD - (value / top) * (HEIGHT - 2 * PAD);
        path += `${path && points[i - 1] !== null ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`;
      });
      this.svg.append(svg("path", { d: path || "M0,0", class: `series s${index % 6}` }));
      const latest = points[points.length - 1];
      const item = document.createElement("li");
      item.className = `s${index % 6}`;
      item.textContent = `${name}: ${latest === null ? "–" : this.format(latest)}`;
      this.legend.append(item);
    });
  }
}
