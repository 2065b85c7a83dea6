// rsitr search page: calls the JSON endpoints of search/app.py and draws the results. Every text taken from the
// server (file names, captions, messages) is set with textContent, never parsed as HTML.
"use strict";
const $ = (id) => document.getElementById(id);

async function call(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (e) {
    throw new Error("the server cannot be reached");
  }
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || `the server answered ${response.status}`);
  return body;
}

function message(text) {
  $("msg").textContent = text || "";
  $("msg").hidden = !text;
}

function element(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function showFacts(info) {
  const facts = $("facts");
  const rows = [["model", info.model], ["checkpoint", info.checkpoint], ["images", info.images],
                ["index", info.kind], ["dim", info.dim]];
  if (info.captions) rows.push(["captions", info.captions]);
  for (const [name, value] of rows) {
    const div = element("div");
    div.append(element("dt", "", name), element("dd", "", String(value)));
    div.lastChild.title = String(value);
    facts.append(div);
  }
}

function card(hit) {
  const c = element("figure", "card");
  c.dataset.file = hit.file;
  c.dataset.row = hit.row;
  const link = element("a");
  link.href = hit.image;
  link.target = "_blank";
  link.rel = "noopener";
  const img = element("img");
  img.src = hit.thumb;
  img.alt = hit.file;
  img.loading = "lazy";
  link.append(img);
  const meta = element("div", "meta");
  meta.append(element("span", "rank", `#${hit.rank}`), element("span", "score", hit.score.toFixed(3)));
  const name = element("div", "file", hit.file.split("/").pop());
  name.title = hit.file;
  const like = element("button", "like", "more like this");
  like.type = "button";
  like.addEventListener("click", () => run(`/api/similar?row=${hit.row}&k=${topk()}`));
  c.append(link, meta, name, like);
  return c;
}

function show(body) {
  const grid = $("grid");
  grid.replaceChildren(...body.results.map(card));
  $("title").textContent = `${body.results.length} results: ${body.query}`;
  const caps = body.captions || [];
  $("captions").replaceChildren(...caps.map((c) => {
    const li = element("li");
    li.append(element("span", "score", c.score.toFixed(3)), element("span", "caption", c.caption));
    return li;
  }));
  $("captions-box").hidden = caps.length === 0;
  grid.dataset.query = body.query;
  grid.dataset.seq = String(Number(grid.dataset.seq || 0) + 1);
  grid.dataset.state = "done";
}

function topk() { return Math.max(1, Math.min(100, parseInt($("k").value, 10) || 20)); }

async function run(url, options) {
  const grid = $("grid");
  grid.dataset.state = "busy";
  message("");
  try {
    show(await call(url, options));
  } catch (e) {
    grid.dataset.state = "error";
    message(e.message);
  }
}

function textSearch() {
  const q = $("q").value.trim();
  if (!q) {
    $("grid").dataset.state = "error";
    message("empty query: type a sentence describing the images you look for");
    return;
  }
  const params = new URLSearchParams({ q: q, k: String(topk()) });
  history.replaceState(null, "", `?${params}`);  // the address of this search can be shared or bookmarked
  run(`/api/text?${params}`);
}

$("text-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  textSearch();
});

$("upload").addEventListener("change", () => {
  const file = $("upload").files[0];
  if (!file) return;
  const data = new FormData();
  data.append("file", file);
  run(`/api/image?k=${topk()}`, { method: "POST", body: data });
  $("upload").value = "";
});

call("/api/info").then(showFacts).catch((e) => message(e.message));
const start = new URLSearchParams(location.search);  // /?q=...&k=... runs that search on load
if (start.get("k")) $("k").value = start.get("k");
if (start.get("q")) {
  $("q").value = start.get("q");
  textSearch();
}
