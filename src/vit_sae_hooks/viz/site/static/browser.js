// The feature browser: one page, three views chosen by the URL's hash:
//   #feature=N            one feature: top images with heatmaps, histograms, labels, similar features
//   #image=I[&token=T]    one image: its patch grid; a token (model position T) lists its features
//   anything else         the index of all features
// Data files are scripts in data/ that call vsh.loaded(key, value): a page opened from file:// may load
// scripts from its folder but not fetch files. Each is loaded once, when a view first needs it.
"use strict";

const vsh = (() => {
  const entries = new Map(); // key -> {promise, resolve, reject, requested}

  function entry(key) {
    if (!entries.has(key)) {
      const record = {};
      record.promise = new Promise((resolve, reject) => Object.assign(record, { resolve, reject }));
      entries.set(key, record);
    }
    return entries.get(key);
  }

  function load(key) {
    const record = entry(key);
    if (!record.requested) {
      record.requested = true;
      const script = document.createElement("script");
      script.src = `data/${key}.js`;
      script.onerror = () => record.reject(new Error(`cannot load data/${key}.js: is the site folder complete?`));
      document.head.append(script);
    }
    return record.promise;
  }

  return { load, loaded: (key, value) => entry(key).resolve(value) };
})();
window.vsh = vsh;

let meta = null; // the site's settings (data/meta.js)
let renderCount = 0; // a view checks this after each await: a newer navigation wins
const indexState = { sort: "image_frequency", descending: true, query: "", scrollTop: 0 };

// ---------- small DOM helpers (text always goes in as text, never as HTML) ----------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  setAttributes(node, attributes);
  node.append(...children.flat().filter((child) => child !== null && child !== undefined));
  return node;
}

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  setAttributes(node, attributes);
  node.append(...children.flat());
  return node;
}

function setAttributes(node, attributes) {
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "onclick") node.addEventListener("click", value);
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value);
  }
}

function format(value, digits = 3) {
  if (value === 0) return "0";
  return Math.abs(value) >= 1e-3 && Math.abs(value) < 1e5 ? Number(value.toPrecision(digits)).toString() : value.toExponential(digits - 1);
}

function percent(fraction) {
  return `${format(100 * fraction)}%`;
}

function featureLink(id, text = `#${id}`) {
  return el("a", { href: `#feature=${id}` }, text);
}

// ---------- what the data means ----------

function featureId(position) {
  return meta.features ? meta.features[position] : position;
}

function featurePosition(id) {
  if (!meta.features) return Number.isInteger(id) && id >= 0 && id < meta.n_features ? id : -1;
  if (!meta.positionOf) meta.positionOf = new Map(meta.features.map((feature, position) => [feature, position]));
  return meta.positionOf.has(id) ? meta.positionOf.get(id) : -1;
}

function shardKey(kind, index) {
  return `${kind}/${String(index).padStart(5, "0")}`;
}

function className(label) {
  return meta.classes && label >= 0 ? meta.classes[label] : "";
}

function tokenName(row) {
  const kind = meta.rows.kinds[row];
  const position = meta.rows.positions[row];
  if (kind === "patch") {
    const patch = meta.rows.patches[row];
    return `patch (${Math.floor(patch / meta.grid[1])}, ${patch % meta.grid[1]})`;
  }
  if (kind === "register") return `register token ${position}`;
  return kind === "cls" ? "CLS token" : "image";
}

function rowOfToken(position) {
  return meta.rows.positions.indexOf(position);
}

// ---------- routing ----------

async function route() {
  const render = ++renderCount;
  const params = new URLSearchParams(location.hash.slice(1));
  const view = document.getElementById("view");
  document.body.dataset.state = "loading";
  try {
    let content;
    if (params.has("feature")) content = await featureView(Number(params.get("feature")));
    else if (params.has("image")) content = await imageView(Number(params.get("image")), params.get("token"));
    else content = await indexView();
    if (render !== renderCount) return;
    view.replaceChildren(...content);
    if (!params.has("feature") && !params.has("image")) paintIndex();
    window.scrollTo(0, 0);
  } catch (error) {
    if (render !== renderCount) return;
    view.replaceChildren(el("p", { class: "error" }, error.message));
  }
  document.body.dataset.route = location.hash;
  document.body.dataset.state = "ready";
}

async function main() {
  meta = await vsh.load("meta");
  document.getElementById("site-title").textContent = `${meta.model} · ${meta.sae} · ${meta.hook} (${meta.token_set} tokens)`;
  window.addEventListener("hashchange", route);
  await route();
}

// ---------- index ----------

const COLUMNS = [
  ["id", "feature"],
  ["label", "label"],
  ["image_frequency", "images"],
  ["token_frequency", "tokens"],
  ["max", "max act."],
];
let index = null; // {summary, live: positions that fired, dead: positions that never did}

async function indexView() {
  const summary = await vsh.load("summary");
  if (!index) {
    const live = [], dead = [];
    summary.image_frequency.forEach((frequency, position) => (frequency > 0 ? live : dead).push(position));
    index = { summary, live, dead };
  }
  document.title = `Features · ${meta.sae}`;
  const search = el("input", { type: "search", placeholder: "search by id or label", value: indexState.query, "aria-label": "search features" });
  search.addEventListener("input", () => {
    indexState.query = search.value;
    paintIndex(true);
  });
  const head = el("div", { class: "table-head", role: "row" },
    COLUMNS.map(([key, title]) => el("button", { "data-key": key, onclick: () => sortBy(key) }, title)));
  return [
    el("h1", {}, "Features"),
    el("div", { class: "stats" },
      el("span", {}, el("b", {}, `${meta.n_features}`), " features shown"),
      el("span", {}, el("b", {}, `${index.live.length}`), " fired"),
      el("span", {}, el("b", {}, `${index.dead.length}`), " dead"),
      el("span", {}, el("b", {}, `${meta.n_images}`), " images")),
    el("section", { class: "card" }, el("h2", {}, "Feature density (fraction of images a feature fires on)"), densityChart(summary)),
    el("section", { class: "card" },
      el("div", { class: "controls" }, search, el("span", { class: "muted", id: "match-count" })),
      head,
      el("div", { class: "vlist", id: "feature-list", role: "table" }, el("div", { class: "vspacer" }))),
    deadList(),
  ];
}

function sortBy(key) {
  indexState.descending = indexState.sort === key ? !indexState.descending : key !== "id" && key !== "label";
  indexState.sort = key;
  paintIndex(true);
}

function matchingOrder() {
  const { summary, live } = index;
  const query = indexState.query.trim().toLowerCase();
  let order = live;
  if (query) {
    order = live.filter((position) => String(featureId(position)).startsWith(query) ||
      summary.label_names[summary.label[position]].toLowerCase().includes(query));
  }
  const key = indexState.sort;
  const value = key === "id" ? featureId : key === "label" ? (p) => summary.label_names[summary.label[p]] : (p) => summary[key][p];
  const sign = indexState.descending ? -1 : 1;
  return [...order].sort((a, b) => {
    const x = value(a), y = value(b);
    return x < y ? -sign : x > y ? sign : featureId(a) - featureId(b);
  });
}

// The list holds one absolutely placed row per visible feature; scrolling repaints only those rows.
function paintIndex(reorder = false) {
  const list = document.getElementById("feature-list");
  if (!list) return;
  if (reorder || !index.order) {
    index.order = matchingOrder();
    if (reorder) indexState.scrollTop = 0;
  }
  for (const button of document.querySelectorAll(".table-head button")) {
    button.setAttribute("aria-sort", button.dataset.key === indexState.sort ? (indexState.descending ? "descending" : "ascending") : "none");
  }
  document.getElementById("match-count").textContent = `${index.order.length} of ${index.live.length} live features`;
  const rowHeight = parseFloat(getComputedStyle(document.documentElement).getPropertyValue("--row"));
  const spacer = list.firstElementChild;
  spacer.style.height = `${index.order.length * rowHeight}px`;
  list.scrollTop = indexState.scrollTop;
  const paint = () => {
    indexState.scrollTop = list.scrollTop;
    const first = Math.max(0, Math.floor(list.scrollTop / rowHeight) - 10);
    const last = Math.min(index.order.length, Math.ceil((list.scrollTop + list.clientHeight) / rowHeight) + 10);
    const rows = [];
    for (let i = first; i < last; i++) rows.push(indexRow(index.order[i], i * rowHeight));
    spacer.replaceChildren(...rows);
  };
  list.onscroll = () => requestAnimationFrame(paint);
  paint();
}

function indexRow(position, top) {
  const { summary } = index;
  const id = featureId(position);
  return el("a", { class: "vrow", role: "row", href: `#feature=${id}`, style: `top:${top}px`, "data-feature": id },
    el("span", {}, `#${id}`),
    el("span", { class: "label" }, summary.label_names[summary.label[position]]),
    el("span", {}, percent(summary.image_frequency[position])),
    el("span", {}, percent(summary.token_frequency[position])),
    el("span", {}, format(summary.max[position])));
}

function deadList() {
  const section = el("section", { class: "card", id: "dead-features" },
    el("h2", {}, `Dead features (${index.dead.length}): never fired on these images`));
  if (!index.dead.length) return section;
  // Consecutive ids are written as one range, so thousands of dead features stay a short list.
  const links = [];
  let start = 0;
  for (let i = 1; i <= index.dead.length; i++) {
    const from = featureId(index.dead[start]);
    if (i < index.dead.length && featureId(index.dead[i]) === featureId(index.dead[i - 1]) + 1) continue;
    const to = featureId(index.dead[i - 1]);
    links.push(featureLink(from, from === to ? `#${from}` : `#${from}–${to}`));
    start = i;
  }
  section.append(el("div", { class: "dead-list" }, links));
  return section;
}

// log10 of the image frequency, in bins of a quarter decade, from the rarest possible (one image) to 1.
function densityChart(summary) {
  const lowest = Math.floor(Math.log10(1 / meta.n_images) * 4) / 4;
  const counts = new Array(Math.round(-lowest * 4) + 1).fill(0);
  for (const frequency of summary.image_frequency) {
    if (frequency > 0) counts[Math.min(counts.length - 1, Math.floor((Math.log10(frequency) - lowest) * 4))] += 1;
  }
  // Ticks at whole decades, written as percentages of the images.
  const labels = counts.map((_, bin) => {
    const decade = lowest + bin / 4;
    return Number.isInteger(decade) ? `${format(100 * 10 ** decade)}%` : "";
  });
  return barChart(counts, labels, "features", 640);
}

function barChart(counts, labels, unit, width) {
  const height = width / 4, bottom = 16, left = 30;
  const most = Math.max(1, ...counts);
  const barWidth = (width - left) / counts.length;
  const bars = counts.map((count, bin) => {
    const barHeight = (count / most) * (height - bottom - 8);
    return svg("rect", { class: "bar", x: left + bin * barWidth + 0.5, y: height - bottom - barHeight,
      width: Math.max(1, barWidth - 1), height: barHeight }, svg("title", {}, `${labels[bin] || ""} ${count} ${unit}`));
  });
  const ticks = labels.map((label, bin) => (label ? svg("text", { x: left + bin * barWidth, y: height - 4 }, label) : null)).filter(Boolean);
  return svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img" },
    svg("line", { class: "axis", x1: left, x2: width, y1: height - bottom, y2: height - bottom }),
    svg("text", { x: 0, y: 12 }, String(most)), svg("text", { x: 0, y: height - bottom }, "0"), bars, ticks);
}

// ---------- feature view ----------

async function featureView(id) {
  const position = featurePosition(id);
  if (position < 0) throw new Error(`feature ${id} is not in this site (it shows ${meta.n_features} features)`);
  const shard = await vsh.load(shardKey("features", Math.floor(position / meta.features_per_shard)));
  const feature = shard.features[position - shard.first];
  document.title = `Feature ${id} · ${meta.sae}`;
  const previous = position > 0 ? featureLink(featureId(position - 1), "← previous") : null;
  const next = position + 1 < meta.n_features ? featureLink(featureId(position + 1), "next →") : null;
  return [
    el("div", { class: "nav" }, el("a", { href: "#" }, "index"), previous, next),
    el("h1", {}, `Feature ${id}`, feature.label ? el("span", { class: "muted" }, ` · ${feature.label}`) : null),
    el("div", { class: "stats" },
      el("span", {}, "fires on ", el("b", {}, percent(feature.image_frequency)), " of images"),
      el("span", {}, el("b", {}, percent(feature.token_frequency)), " of tokens"),
      el("span", {}, "max activation ", el("b", {}, format(feature.max)))),
    el("section", { class: "card" },
      el("h2", {}, `Top ${feature.images.length} images`),
      feature.images.length ? topImages(feature, shard.images) : el("p", { class: "note" }, "This feature never fired on these images.")),
    el("div", { class: "columns" },
      el("section", { class: "card" }, el("h2", {}, "Activation histogram (positive token activations)"), activationChart(feature)),
      el("section", { class: "card" }, el("h2", {}, "CLS versus patch activity"), kindTable(feature)),
      meta.classes ? el("section", { class: "card" }, el("h2", {}, "Classes of the top images"), classBars(feature, shard.images)) : null,
      feature.text_labels.length ? el("section", { class: "card" }, el("h2", {}, "Best-matching text labels"), textLabels(feature)) : null,
      el("section", { class: "card" }, el("h2", {}, "Most similar decoder directions"), similarList(feature))),
  ];
}

function topImages(feature, images) {
  const figures = feature.images.map((image, slot) => {
    const [name, label] = images[image];
    return el("figure", { "data-image": image },
      el("a", { href: `#image=${image}` }, thumbnail(image, 140, feature.maps[slot], feature.scores[slot] / feature.max)),
      el("figcaption", {},
        el("a", { class: "image-name", href: `#image=${image}` }, name), el("br"),
        el("span", { class: "score" }, format(feature.scores[slot])), label >= 0 ? ` · ${className(label)}` : ""));
  });
  return el("div", { class: "top-images" }, figures);
}

// An image as the model saw it; with a map, each patch is tinted by the feature's activation there,
// on one scale per feature (``scale``: this image's score over the feature's max) so tints compare.
function thumbnail(image, size, map = null, scale = 1) {
  const box = el("div", { class: "thumb" },
    el("img", { src: `thumbs/${image}.${meta.thumb.extension}`, alt: `image ${image}`, width: size,
      height: Math.round((size * meta.thumb.height) / meta.thumb.width) }));
  if (map && meta.grid) {
    const [rows, columns] = meta.grid;
    const cells = [...map].map((character) => {
      const strength = (meta.map.alphabet.indexOf(character) / meta.map.levels) * scale;
      return el("div", { style: `opacity:${(0.75 * strength).toFixed(3)}` });
    });
    box.append(el("div", { class: "heat", style: `grid-template:repeat(${rows},1fr)/repeat(${columns},1fr)` }, cells));
  }
  return box;
}

function activationChart(feature) {
  if (!feature.histogram) return el("p", { class: "note" }, "No activations.");
  const [first, counts] = feature.histogram;
  const { bins_per_octave: perOctave, lowest_octave: lowest } = meta.histogram;
  const edge = (bin) => 2 ** (lowest + bin / perOctave);
  // A tick per octave (per bin when there are few), at the bin's lower edge.
  const labels = counts.map((_, i) => (i % perOctave === 0 || counts.length < 6 ? format(edge(first + i), 2) : ""));
  return barChart(counts, labels, "tokens", 360);
}

function kindTable(feature) {
  const names = { cls: "CLS token", register: "register tokens", patch: "patch tokens", image: "image vector" };
  const total = Object.values(feature.kinds).reduce((sum, [, activation]) => sum + activation, 0);
  const rows = Object.entries(feature.kinds).map(([kind, [fires, activation]]) => {
    const tokens = meta.n_images * meta.rows.kinds.filter((k) => k === kind).length;
    return el("tr", { "data-kind": kind }, el("td", {}, names[kind]), el("td", {}, percent(fires / tokens)),
      el("td", {}, fires ? format(activation / fires) : "–"), el("td", {}, total ? percent(activation / total) : "–"));
  });
  return el("table", { class: "plain" },
    el("tr", {}, el("th", {}, "tokens"), el("th", {}, "fires on"), el("th", {}, "mean when firing"), el("th", {}, "share of activation")),
    rows);
}

function classBars(feature, images) {
  const counts = new Map();
  for (const image of feature.images) {
    const label = images[image][1];
    if (label >= 0) counts.set(label, (counts.get(label) || 0) + 1);
  }
  const sorted = [...counts].sort((a, b) => b[1] - a[1] || a[0] - b[0]);
  if (!sorted.length) return el("p", { class: "note" }, "No labelled top images.");
  return el("div", { class: "class-bars" }, sorted.map(([label, count]) => el("div", { class: "hbar", "data-class": className(label) },
    el("span", {}, className(label)), el("div", { class: "fill", style: `width:${(100 * count) / sorted[0][1]}%` }), el("span", {}, String(count)))));
}

function textLabels(feature) {
  return el("table", { class: "plain text-labels" },
    el("tr", {}, el("th", {}, "label"), el("th", {}, "score")),
    feature.text_labels.map(([label, score]) => el("tr", {}, el("td", {}, label), el("td", {}, format(score)))));
}

function similarList(feature) {
  if (!feature.similar.length) return el("p", { class: "note" }, "No other features in this site.");
  return el("table", { class: "plain similar" },
    el("tr", {}, el("th", {}, "feature"), el("th", {}, "cosine")),
    feature.similar.map(([id, cosine]) => el("tr", {}, el("td", {}, featureLink(id)), el("td", {}, format(cosine)))));
}

// ---------- image view ----------

async function imageView(image, token) {
  if (!Number.isInteger(image) || image < 0 || image >= meta.n_images) {
    throw new Error(`image ${image} is not in this site (it has images 0–${meta.n_images - 1})`);
  }
  const shard = await vsh.load(shardKey("images", Math.floor(image / meta.images_per_shard)));
  const summary = await vsh.load("summary");
  const record = shard.images[image - shard.first];
  const row = token === null ? strongestRow(record) : rowOfToken(Number(token));
  if (row < 0) throw new Error(`token ${token} is not one the SAE reads (its tokens: ${meta.rows.positions.join(", ")})`);
  document.title = `Image ${image} · ${meta.sae}`;
  const label = (position) => summary.label_names[summary.label[position]];
  const choose = (r) => `#image=${image}&token=${meta.rows.positions[r]}`;
  const pressed = (r) => (r === row ? "true" : "false");
  const size = 384;
  const picture = thumbnail(image, size);
  if (meta.grid) {
    const [rows, columns] = meta.grid;
    const cells = new Array(rows * columns).fill(null).map((_, patch) => {
      const r = meta.rows.patches.indexOf(patch);
      return r < 0 ? el("span") : el("button", { "data-token": meta.rows.positions[r], title: tokenName(r), "aria-pressed": pressed(r),
        onclick: () => (location.hash = choose(r)) });
    });
    picture.append(el("div", { class: "patches", style: `grid-template:repeat(${rows},1fr)/repeat(${columns},1fr)` }, cells));
  }
  const others = meta.rows.kinds.map((kind, r) => (kind === "patch" ? null :
    el("button", { "data-token": meta.rows.positions[r], "aria-pressed": pressed(r), onclick: () => (location.hash = choose(r)) }, tokenName(r))))
    .filter(Boolean);
  const pairs = record.tokens[row];
  const listed = [];
  for (let i = 0; i < pairs.length; i += 2) {
    const position = featurePosition(pairs[i]);
    listed.push(el("tr", { "data-feature": pairs[i] }, el("td", {}, featureLink(pairs[i])), el("td", {}, label(position)),
      el("td", {}, format(pairs[i + 1]))));
  }
  return [
    el("div", { class: "nav" }, el("a", { href: "#" }, "index"),
      image > 0 ? el("a", { href: `#image=${image - 1}` }, "← previous") : null,
      image + 1 < meta.n_images ? el("a", { href: `#image=${image + 1}` }, "next →") : null),
    el("h1", {}, record.name, record.label >= 0 ? el("span", { class: "muted" }, ` · ${className(record.label)}`) : null),
    el("div", { class: "image-layout" },
      el("div", {}, picture, others.length ? el("div", { class: "token-buttons" }, others) : null,
        el("p", { class: "note" }, meta.grid ? "Choose a patch to list the features active there." : "")),
      el("section", { class: "card" },
        el("h2", { id: "token-title" }, `Features active on the ${tokenName(row)} (token ${meta.rows.positions[row]}), strongest first`),
        listed.length ? el("table", { class: "plain token-features" },
          el("tr", {}, el("th", {}, "feature"), el("th", {}, "label"), el("th", {}, "activation")), listed)
          : el("p", { class: "note" }, "No feature of this site fires on this token."))),
  ];
}

// With no token chosen, show the one whose strongest feature is strongest.
function strongestRow(record) {
  let best = 0, bestValue = -1;
  record.tokens.forEach((pairs, row) => {
    if (pairs.length && pairs[1] > bestValue) [best, bestValue] = [row, pairs[1]];
  });
  return best;
}

main().catch((error) => {
  document.getElementById("view").replaceChildren(el("p", { class: "error" }, error.message));
  document.body.dataset.state = "ready";
});
