// Reading the services' Prometheus text (GET /api/v1/ops/<service>/metrics) in the browser:
// the samples, sums over labels, and quantiles of a histogram the way PromQL's
// histogram_quantile() estimates them (linear inside the bucket the rank falls in).

/** [{name, labels: {k: v}, value}] of a Prometheus text exposition. */
export function parse(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = {};
    for (const [, key, value] of (match[2] || "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[key] = value.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    }
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

/** The sum of every sample named `name` whose labels include `where`. */
export function sum(samples, name, where = {}) {
  return samples
    .filter((s) => s.name === name && Object.entries(where).every(([k, v]) => s.labels[k] === v))
    .reduce((total, s) => total + s.value, 0);
}

/** Sums of `name` by the value of one label: {labelValue: total}. */
export function byLabel(samples, name, label) {
  const out = {};
  for (const s of samples) {
    if (s.name === name) out[s.labels[label]] = (out[s.labels[label]] || 0) + s.value;
  }
  return out;
}

/** The q-quantile (0..1) of histogram `name` summed over its other labels, or null if empty. */
export function quantile(samples, name, q) {
  // [[upper bound, cumulative count]], smallest bound first ("+Inf" is Infinity).
  const buckets = Object.entries(byLabel(samples, `${name}_bucket`, "le"))
    .map(([le, cumulative]) => [Number(le.replace("+Inf", "Infinity")), cumulative])
    .sort((a, b) => a[0] - b[0]);
  const count = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!count) return null;
  const rank = q * count;
  let lower = 0;
  let below = 0;
  for (const [bound, cumulative] of buckets) {
    if (cumulative >= rank) {
      if (bound === Infinity) return lower; // beyond the largest bucket: its bound is the estimate
      return lower + (bound - lower) * ((rank - below) / Math.max(cumulative - below, 1e-9));
    }
    lower = bound;
    below = cumulative;
  }
  return lower;
}
