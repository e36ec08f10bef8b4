// rcnn report: the gallery. Vanilla JavaScript, no network: the data is in the page (#report-data).
// The URL hash keeps the view (#sort=ap&class=dog&error=loc&page=2&per=60&open=ID), so a view can be bookmarked or shared.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const classes = data.classes, images = data.images;
  const TAGS = {tp: "TP", cls: "CLS", loc: "LOC", both: "BOTH", dupe: "DUPE", bkg: "BKG", miss: "MISS", fn: "FN",
                gt: "GT", ignored: "DIFF"};
  const VERDICTS = {tp: "true positive", cls: "false positive: wrong class", loc: "false positive: badly placed",
                    both: "false positive: wrong class and badly placed", dupe: "false positive: duplicate",
                    bkg: "false positive: background", miss: "missed", fn: "not found (a wrong box points at it)",
                    gt: "found", ignored: "difficult (not counted)"};
  const SORTS = {
    worst: (a, b) => (b.fp + b.fn) - (a.fp + a.fn) || a.file_name.localeCompare(b.file_name),
    ap: (a, b) => (a.ap === null) - (b.ap === null) || (a.ap - b.ap) || (b.fp + b.fn) - (a.fp + a.fn),
    name: (a, b) => a.file_name.localeCompare(b.file_name) || a.id.localeCompare(b.id),
  };
  const $ = (id) => document.getElementById(id);
  const ui = {sort: $("sort"), cls: $("filter-class"), error: $("filter-error"), per: $("per-page")};
  const state = {sort: "worst", class: "", error: "", page: 1, per: 60, open: ""};

  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1) || location.search.slice(1));
    if (SORTS[params.get("sort")]) state.sort = params.get("sort");
    if (classes.includes(params.get("class"))) state.class = params.get("class");
    if (params.get("error") && TAGS[params.get("error")]) state.error = params.get("error");
    state.page = Math.max(1, parseInt(params.get("page"), 10) || 1);
    state.per = Math.min(1000, Math.max(1, parseInt(params.get("per"), 10) || state.per));
    state.open = params.get("open") || "";
  }

  function writeHash() {
    const params = new URLSearchParams();
    if (state.sort !== "worst") params.set("sort", state.sort);
    if (state.class) params.set("class", state.class);
    if (state.error) params.set("error", state.error);
    if (state.page > 1) params.set("page", state.page);
    if (state.per !== 60) params.set("per", state.per);
    if (state.open) params.set("open", state.open);
    history.replaceState(null, "", "#" + params.toString());
  }

  // the (class, kind) pairs of an image: each shown detection and each object
  function rows(img) {
    return img.dets.map((d) => [d[4], d[7]]).concat(img.gts.map((g) => [g[4], g[5] === "tp" ? "gt" : g[5]]));
  }

  function matches(img) {
    if (!state.class && !state.error) return true;
    const c = state.class ? classes.indexOf(state.class) : -1;
    return rows(img).some(([k, kind]) => (c < 0 || k === c) && (!state.error || kind === state.error));
  }

  function svgEl(name, attrs) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    return el;
  }

  // the boxes of one image over its picture; full: longer labels and box numbers
  function overlay(img, full) {
    const svg = svgEl("svg", {viewBox: `0 0 ${img.width} ${img.height}`, preserveAspectRatio: "none"});
    const size = Math.max(img.width, img.height) / (full ? 45 : 14);
    const draw = (box, kind, label) => {
      const [x1, y1, x2, y2] = box;
      svg.appendChild(svgEl("rect", {x: x1, y: y1, width: x2 - x1, height: y2 - y1, class: `box k-${kind}`}));
      const t = svgEl("text", {x: x1 + size * 0.2, y: y1 + size, class: `tag k-${kind}`, "font-size": size});
      t.textContent = label;
      svg.appendChild(t);
    };
    img.gts.forEach((g, j) => {
      const kind = g[5] === "tp" ? "gt" : g[5];
      draw(g, kind, full ? `G${j + 1} ${TAGS[kind]} ${classes[g[4]]}` : (kind === "gt" ? "" : TAGS[kind]));
    });
    img.dets.forEach((d, i) => draw(d, d[7], full ? `D${i + 1} ${TAGS[d[7]]} ${classes[d[4]]} ${d[5].toFixed(2)}` : TAGS[d[7]]));
    return svg;
  }

  function frame(img, src, full) {
    const div = document.createElement("div");
    div.className = "frame";
    div.style.aspectRatio = `${img.width} / ${img.height}`;
    const pic = document.createElement("img");
    pic.loading = "lazy";
    pic.alt = img.file_name;
    if (src) pic.src = src;
    div.append(pic, overlay(img, full));
    return div;
  }

  function entry(img) {
    const fig = document.createElement("figure");
    fig.className = "entry";
    fig.dataset.id = img.id;
    fig.append(frame(img, img.picture && "thumbs/" + img.picture, false));
    const cap = document.createElement("figcaption");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = img.file_name;
    const ap = img.ap === null ? "–" : img.ap.toFixed(2);
    cap.append(name, `TP ${img.tp} · FP ${img.fp} · FN ${img.fn} · AP ${ap}`);
    fig.append(cap);
    fig.addEventListener("click", () => openViewer(img));
    return fig;
  }

  function cell(tr, text) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.appendChild(td);
  }

  function openViewer(img) {
    $("viewer-title").textContent = img.file_name;
    const holder = $("viewer-image");
    holder.replaceChildren(frame(img, img.picture && "full/" + img.picture, true));
    const body = $("viewer-table").tBodies[0];
    body.replaceChildren();
    img.dets.forEach((d, i) => {
      // the object the verdict is about: the one found, the one a wrong box points at, the one found twice
      const about = d[8] >= 0 ? ` (G${d[8] + 1}${d[7] === "cls" ? ", a " + classes[img.gts[d[8]][4]] : ""})` : "";
      const tr = body.insertRow();
      [`D${i + 1}`, classes[d[4]], d[5].toFixed(3), d[6].toFixed(2), VERDICTS[d[7]] + about].forEach((t) => cell(tr, t));
    });
    img.gts.forEach((g, j) => {
      const tr = body.insertRow();
      const kind = g[5] === "tp" ? "gt" : g[5];
      [`G${j + 1}`, classes[g[4]], "", "", "ground truth: " + VERDICTS[kind]].forEach((t) => cell(tr, t));
    });
    if (!$("viewer").open) $("viewer").showModal();
    state.open = img.id;
    writeHash();
  }

  function render() {
    const chosen = images.filter(matches).sort(SORTS[state.sort]);
    const pages = Math.max(1, Math.ceil(chosen.length / state.per));
    state.page = Math.min(state.page, pages);
    const start = (state.page - 1) * state.per, shown = chosen.slice(start, start + state.per);
    $("gallery").replaceChildren(...shown.map(entry));
    const count = $("count");
    count.dataset.matching = chosen.length;
    count.dataset.shown = shown.length;
    count.textContent = chosen.length ? `images ${start + 1}–${start + shown.length} of ${chosen.length} matching ` +
      `(${images.length} in all)` : `no image matches (${images.length} in all)`;
    $("page").textContent = `page ${state.page} of ${pages}`;
    $("prev").disabled = state.page <= 1;
    $("next").disabled = state.page >= pages;
    writeHash();
  }

  function setUp() {
    for (const c of classes) ui.cls.add(new Option(c, c));
    readHash();
    ui.sort.value = state.sort;
    ui.cls.value = state.class;
    ui.error.value = state.error;
    if (![...ui.per.options].some((o) => o.value === String(state.per))) ui.per.add(new Option(state.per, state.per));
    ui.per.value = String(state.per);
    const on = (el, key, parse) => el.addEventListener("change", () => { state[key] = parse(el.value); state.page = 1; render(); });
    on(ui.sort, "sort", String);
    on(ui.cls, "class", String);
    on(ui.error, "error", String);
    on(ui.per, "per", (v) => parseInt(v, 10));
    $("prev").addEventListener("click", () => { state.page -= 1; render(); });
    $("next").addEventListener("click", () => { state.page += 1; render(); });
    $("viewer-close").addEventListener("click", () => $("viewer").close());
    $("viewer").addEventListener("close", () => { state.open = ""; writeHash(); });
    const opened = state.open;
    render();
    const img = images.find((i) => i.id === opened);
    if (img) openViewer(img);
  }

  setUp();
})();
