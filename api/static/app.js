// The xtaldiff page: a design form, a job view that polls until the job ends, then a table
// and a 3D view of its structures. It only talks to the documented HTTP API of this origin.

const KEY_STORAGE = "xtaldiff.apiKey";
const POLL_MS = 1000;
const PAGE_SIZE = 500; // the largest page GET /jobs/{id}/structures serves
// CDVAE's success thresholds: the 5th, 10th and 15th percentiles of the training property.
const SUCCESS_PERCENTILES = ["5", "10", "15"];
// The histogram's drawing area in its SVG's viewBox units (index.html: 360 x 96).
const HISTOGRAM = { width: 360, left: 8, right: 352, top: 12, base: 70 };
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
// How long a downloaded blob stays addressable: the browser reads it after click() returns.
const DOWNLOAD_URL_LIFETIME_MS = 60_000;

// The periodic table, one string per row, "." for an empty cell; the f-block rows below.
const PERIODIC_ROWS = [
  "H . . . . . . . . . . . . . . . . He",
  "Li Be . . . . . . . . . . B C N O F Ne",
  "Na Mg . . . . . . . . . . Al Si P S Cl Ar",
  "K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr",
  "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe",
  "Cs Ba La Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn",
  "Fr Ra Ac Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og",
  ". . . Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu .",
  ". . . Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr .",
].map((row) => row.split(" "));

const $ = (id) => document.getElementById(id);

const page = {
  models: [],
  model: null, // the model chosen in the form
  allowedElements: new Set(), // empty: every element of the model
  automaticTarget: "", // the target the page chose itself; one the user typed or clicked is kept
  systemMinimum: null, // the least property among the training structures of the allowed elements
  job: null, // the job shown: {id, timer, items, unit, target, sortKey, descending, selected}
  viewer: null, // the 3Dmol viewer, made when the first structure is shown
};

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

// Every request goes through here, so the key (when there is one) is always sent.
async function api(path, options = {}) {
  const headers = new Headers(options.headers);
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers.set("Authorization", `Bearer ${key}`);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (error) {
    throw new ApiError(0, `the server did not answer (${error.message})`);
  }
  if (response.ok) return response;
  const detail = await problemDetail(response);
  if (response.status === 401 || response.status === 403) askForKey(detail);
  throw new ApiError(response.status, detail);
}

async function problemDetail(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// --- API key -------------------------------------------------------------------------------

function askForKey(detail) {
  sessionStorage.removeItem(KEY_STORAGE);
  stopPolling();
  $("key-message").textContent = detail;
  $("key-panel").hidden = false;
  $("design-panel").hidden = true;
  $("job-panel").hidden = true;
  $("key-forget").hidden = true;
  $("key-input").focus();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, $("key-input").value.trim());
  $("key-input").value = "";
  start();
});

$("key-forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORAGE);
  start();
});

// --- The form ------------------------------------------------------------------------------

async function start() {
  let models;
  try {
    models = await (await api("/models")).json();
  } catch (error) {
    if (error.status !== 401 && error.status !== 403) {
      $("design-panel").hidden = false;
      $("submit").disabled = true;
      showFormError(`The models could not be loaded (${error.message}); reload the page to try again.`);
    }
    return;
  }
  $("key-panel").hidden = true;
  $("key-forget").hidden = !sessionStorage.getItem(KEY_STORAGE);
  $("design-panel").hidden = false;
  page.models = models;
  const select = $("model");
  select.replaceChildren(...models.map((model) => {
    const label = `${model.name}: ${model.dataset}, ${model.conditioning.toUpperCase()}`;
    return new Option(model.active ? `${label}, active` : label, model.name);
  }));
  $("submit").disabled = models.length === 0;
  if (models.length === 0) {
    showFormError("No model is ready on this server: an admin uploads one through /admin/checkpoints.");
  } else {
    chooseModel(models.find((model) => model.active) ?? models[0]);
    showFormError("");
  }
  openJobFromHash();
}

$("model").addEventListener("change", (event) => {
  chooseModel(page.models.find((model) => model.name === event.target.value));
});

function chooseModel(model) {
  const changed = page.model?.name !== model.name;
  page.model = model;
  $("model").value = model.name;
  const prop = model.property;
  const facts = [
    `${model.dataset}`,
    `${model.conditioning.toUpperCase()} conditioning`,
    `${prop.name} in ${prop.unit}`,
    `trained on ${format(prop.min)} to ${format(prop.max)} ${prop.unit}`,
    `cells of up to ${model.max_num_atoms} atoms`,
  ];
  const rates = model.metrics?.at_default_guidance;
  if (rates && "SR5" in rates) {
    facts.push(`SR5/10/15 ${["SR5", "SR10", "SR15"].map((k) => format(rates[k], 2)).join(" / ")}`);
  }
  $("model-info").textContent = facts.join(" · ");
  $("property-name").textContent = prop.name;
  $("property-unit").textContent = prop.unit;
  if (changed || $("target").value === "") {
    $("target").value = page.automaticTarget = roundedTarget(prop.min);
  }
  $("num-atoms").max = model.max_num_atoms;
  $("num-atoms").placeholder = `from training (1 to ${model.max_num_atoms})`;
  $("guidance").placeholder = `${model.default_guidance} (default)`;
  $("steps").placeholder = `${model.default_steps} (default; T = ${model.timesteps})`;
  $("steps").max = model.timesteps;
  if (changed) $("charge-balance").checked = model.default_charge_balance;
  const known = new Set(model.elements);
  page.allowedElements = new Set([...page.allowedElements].filter((symbol) => known.has(symbol)));
  drawPeriodicTable(known);
  drawHistogram();
}

function drawPeriodicTable(known) {
  const cells = PERIODIC_ROWS.flatMap((row, rowIndex) => row.flatMap((symbol, column) => {
    if (symbol === ".") return [];
    const cell = document.createElement("button");
    cell.style.gridRow = rowIndex + 1 + (rowIndex >= 7 ? 1 : 0); // a gap above the f-block
    cell.style.gridColumn = column + 1;
    cell.type = "button";
    cell.textContent = symbol;
    cell.dataset.symbol = symbol;
    cell.disabled = !known.has(symbol);
    cell.title = cell.disabled ? `${symbol}: this model never saw it` : symbol;
    cell.setAttribute("aria-pressed", String(page.allowedElements.has(symbol)));
    return cell;
  }));
  $("periodic-table").replaceChildren(...cells);
  describeElements();
}

$("periodic-table").addEventListener("click", (event) => {
  const symbol = event.target.dataset?.symbol;
  if (!symbol || event.target.disabled) return;
  const allowed = page.allowedElements;
  if (allowed.has(symbol)) allowed.delete(symbol);
  else allowed.add(symbol);
  event.target.setAttribute("aria-pressed", String(allowed.has(symbol)));
  describeElements();
});

$("elements-clear").addEventListener("click", () => {
  page.allowedElements.clear();
  for (const button of $("periodic-table").querySelectorAll("button")) {
    button.setAttribute("aria-pressed", "false");
  }
  describeElements();
});

function describeElements() {
  const chosen = [...page.allowedElements];
  $("elements-summary").textContent = chosen.length
    ? `Only ${chosen.join(", ")}.`
    : `Any of the model's ${page.model.elements.length} elements (pick some to restrict).`;
  $("elements-clear").hidden = chosen.length === 0;
  describeSystem(chosen);
}

// The paper conditions on the training minimum; rounded up so that it stays inside the range.
function roundedTarget(value) {
  return String(Math.ceil(value * 1000) / 1000);
}

// Replaces the target only while it is one the page chose itself.
function setAutomaticTarget(value) {
  const current = $("target").value;
  if (current !== "" && current !== page.automaticTarget) return;
  $("target").value = page.automaticTarget = roundedTarget(value);
  drawHistogram();
}

// A design within a few elements is conditioned, by default, on the least value among the
// training structures made only of them: the dataset's minimum lies outside most systems.
let systemLookup = 0; // only the answer to the latest choice of elements is shown
async function describeSystem(chosen) {
  const lookup = ++systemLookup;
  page.systemMinimum = null;
  $("system-target").hidden = true;
  if (chosen.length === 0) {
    $("system-info").hidden = true;
    setAutomaticTarget(page.model.property.min);
    return;
  }
  let text;
  try {
    const path = `/models/${encodeURIComponent(page.model.name)}/systems/${chosen.map(encodeURIComponent).join("-")}`;
    const system = await (await api(path)).json();
    if (lookup !== systemLookup) return;
    if (system.count === 0) {
      text = `No training structure is made only of ${chosen.join(", ")}: choose the target yourself.`;
    } else {
      const unit = system.unit;
      text = `${system.count} training structure${system.count === 1 ? " is" : "s are"} made only of ` +
        `${chosen.join(", ")}: least ${format(system.minimum)}, 5th percentile ${format(system.p5)}, ` +
        `median ${format(system.median)} ${unit}.`;
      page.systemMinimum = system.minimum;
      $("system-target").hidden = false;
      setAutomaticTarget(system.minimum);
    }
  } catch (error) {
    if (lookup !== systemLookup) return;
    text = `The training structures of ${chosen.join(", ")} could not be looked up (${error.message}).`;
  }
  $("system-text").textContent = text;
  $("system-info").hidden = false;
}

$("system-target").addEventListener("click", () => {
  if (page.systemMinimum === null) return;
  $("target").value = roundedTarget(page.systemMinimum);
  drawHistogram();
});

// The training distribution as a histogram drawn from its percentiles: between two known
// percentiles lies a known share of the training set, so each bar's area is that share.
function drawHistogram() {
  const prop = page.model.property;
  const svg = $("histogram");
  const { left, right, top, base } = HISTOGRAM;
  const known = Object.entries(prop.percentiles)
    .map(([level, value]) => [Number(level), value])
    .sort((a, b) => a[0] - b[0]);
  const points = [[0, prop.min], ...known, [100, prop.max]];
  const target = Number($("target").value);
  const values = [prop.min, prop.max, ...(Number.isFinite(target) ? [target] : [])];
  const pad = 0.04 * (prop.max - prop.min || 1);
  const low = Math.min(...values) - pad, high = Math.max(...values) + pad;
  const x = (value) => left + ((value - low) / (high - low)) * (right - left);
  const bars = [];
  for (let i = 1; i < points.length; i++) {
    const [levelBefore, from] = points[i - 1], [level, to] = points[i];
    if (to > from) bars.push({ from, to, density: (level - levelBefore) / (to - from) });
  }
  const tallest = Math.max(...bars.map((bar) => bar.density));
  const parts = bars.map((bar) => {
    const height = (bar.density / tallest) * (base - top);
    return svgElement("rect", { class: "bar", x: x(bar.from), y: base - height,
      width: Math.max(x(bar.to) - x(bar.from), 0.5), height });
  });
  parts.push(svgElement("line", { class: "axis", x1: left, x2: right, y1: base, y2: base }));
  for (const [value, anchor] of [[prop.min, "start"], [prop.max, "end"]]) {
    parts.push(svgElement("text", { x: x(value), y: base + 12, "text-anchor": anchor }, format(value)));
  }
  for (const level of SUCCESS_PERCENTILES.filter((level) => level in prop.percentiles)) {
    const at = x(prop.percentiles[level]);
    const line = svgElement("line", { class: `threshold sr${level}`, x1: at, x2: at, y1: top - 4, y2: base });
    line.append(svgElement("title", {}, `SR${level}: ${level}th percentile, ${format(prop.percentiles[level])} ${prop.unit}`));
    parts.push(line);
  }
  if (Number.isFinite(target)) {
    const at = x(target);
    parts.push(svgElement("line", { class: "target", x1: at, x2: at, y1: top - 6, y2: base + 2 }));
    // Anchored at the end nearer the middle, so the label never runs out of the picture.
    const anchor = at < HISTOGRAM.width / 3 ? "start" : at > (2 * HISTOGRAM.width) / 3 ? "end" : "middle";
    parts.push(svgElement("text", { class: "target-label", x: at, y: 92, "text-anchor": anchor },
      `target ${format(target)}`));
  }
  svg.replaceChildren(...parts);
  svg.dataset.low = low;
  svg.dataset.high = high;
  $("histogram-caption").textContent =
    `Training set: ${prop.name} from ${format(prop.min)} to ${format(prop.max)} ${prop.unit}` +
    " (bar areas from its percentiles). Click to set the target.";
  const chips = [["training min", prop.min],
    ...SUCCESS_PERCENTILES.filter((level) => level in prop.percentiles)
      .map((level) => [`SR${level} ≤ ${format(prop.percentiles[level])}`, prop.percentiles[level]])];
  $("thresholds").replaceChildren(...chips.map(([label, value], i) => {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = i === 0 ? "chip" : `chip sr${SUCCESS_PERCENTILES[i - 1]}`;
    chip.textContent = label;
    chip.title = `set the target to ${value}`;
    chip.dataset.value = value;
    return chip;
  }));
}

function svgElement(name, attributes, text) {
  const element = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [attribute, value] of Object.entries(attributes)) element.setAttribute(attribute, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

$("histogram").addEventListener("click", (event) => {
  const svg = event.currentTarget;
  const box = svg.getBoundingClientRect();
  const svgX = ((event.clientX - box.left) / box.width) * HISTOGRAM.width;
  const low = Number(svg.dataset.low), high = Number(svg.dataset.high);
  const value = low + ((svgX - HISTOGRAM.left) / (HISTOGRAM.right - HISTOGRAM.left)) * (high - low);
  $("target").value = Number(value.toPrecision(3));
  drawHistogram();
});

$("thresholds").addEventListener("click", (event) => {
  if (event.target.dataset.value === undefined) return;
  $("target").value = Math.round(Number(event.target.dataset.value) * 1000) / 1000;
  drawHistogram();
});

$("target").addEventListener("input", drawHistogram);

function optionalNumber(id) {
  const text = $(id).value.trim();
  return text === "" ? undefined : Number(text);
}

$("design-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const target = optionalNumber("target"); // none: the server's default, the least in training
  if (target !== undefined && !Number.isFinite(target)) {
    showFormError(`Give the target as a number, in ${page.model.property.unit}, or leave it empty.`);
    return;
  }
  const body = {
    model: page.model.name,
    target,
    num_samples: optionalNumber("num-samples"),
    num_atoms: optionalNumber("num-atoms"),
    elements: page.allowedElements.size ? [...page.allowedElements] : undefined,
    guidance: optionalNumber("guidance"),
    steps: optionalNumber("steps"),
    seed: optionalNumber("seed"),
    charge_balance: $("charge-balance").checked,
    relax: $("relax").checked || undefined,
  };
  $("submit").disabled = true;
  try {
    const response = await api("/design", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body), // undefined fields are left out: the server's defaults apply
    });
    const job = await response.json();
    showFormError("");
    location.hash = `job=${job.id}`;
  } catch (error) {
    showFormError(error.message);
  } finally {
    $("submit").disabled = false;
  }
});

function showFormError(message) {
  $("form-error").textContent = message;
}

// --- The job -------------------------------------------------------------------------------

function openJobFromHash() {
  const id = new URLSearchParams(location.hash.slice(1)).get("job");
  if (id) openJob(id);
}

window.addEventListener("hashchange", openJobFromHash);

function openJob(id) {
  stopPolling();
  page.job = { id, timer: null, items: [], unit: "", target: null, sortKey: "index",
    descending: false, selected: null };
  $("job-panel").hidden = false;
  $("results").hidden = true;
  $("job-id").textContent = id;
  for (const field of ["job-request", "job-error", "job-summary", "job-progress-text"]) {
    $(field).textContent = "";
  }
  $("job-warnings").replaceChildren();
  poll(page.job);
}

function stopPolling() {
  if (page.job) clearTimeout(page.job.timer);
}

async function poll(view) {
  let job;
  try {
    job = await (await api(`/jobs/${view.id}`)).json();
  } catch (error) {
    if (view !== page.job) return;
    $("job-error").textContent = error.message;
    // A lost connection is retried; a job that does not exist or a refused key is not.
    if (error.status === 0 || error.status >= 500) view.timer = setTimeout(() => poll(view), POLL_MS);
    return;
  }
  if (view !== page.job) return; // another job was opened meanwhile
  showJob(job);
  if (!FINISHED.has(job.status)) {
    view.timer = setTimeout(() => poll(view), POLL_MS);
  } else if (job.status === "succeeded") {
    await loadStructures(view, job);
  }
}

function showJob(job) {
  const request = job.request, unit = job.model.unit;
  const facts = [
    job.model.name,
    `target ${format(request.target)} ${unit}`,
    `${request.num_samples} structures`,
    request.num_atoms ? `${request.num_atoms} atoms` : null,
    !request.num_atoms && request.atom_counts === "near_target" ? "atom counts near the target" : null,
    request.elements ? `elements ${request.elements.join(", ")}` : null,
    `guidance ${request.guidance}`,
    `${request.steps ?? "all"} steps`,
    request.sampler && request.sampler !== "rescaled" ? `${request.sampler} sampler` : null,
    request.charge_balance ? "charge-balanced species" : null,
    `seed ${request.seed}`,
    request.relax ? "relaxed with CHGNet" : null,
  ];
  $("job-request").textContent = facts.filter(Boolean).join(" · ");
  const status = $("job-status");
  status.textContent = job.status;
  status.className = `status ${job.status}`;
  $("job-progress").value = job.progress.fraction;
  const { done, total, phase } = job.progress;
  let progress;
  if (FINISHED.has(job.status)) progress = `${job.timings.wall_s} s in all`;
  else if (total === 0) progress = "waiting for a worker";
  else if (phase === "relaxing") progress = `relaxing: ${done} of ${total} structures`;
  else progress = `${done} of ${total} steps`;
  $("job-progress-text").textContent = progress;
  $("job-cancel").hidden = FINISHED.has(job.status);
  $("job-warnings").replaceChildren(...job.warnings.map((warning) => {
    const item = document.createElement("li");
    item.textContent = warning;
    return item;
  }));
  $("job-error").textContent = job.error ?? "";
  const summary = job.summary;
  if (summary) {
    const lines = [
      `${summary.num_valid} of ${summary.num_structures} valid`,
      `${summary.num_predicted} predicted`,
      `${summary.num_at_or_below_target} at or below the target`,
    ];
    if (summary.num_novel !== null && summary.num_novel !== undefined) {
      lines.push(`${summary.num_novel} new, ${summary.num_known} already in ${job.model.dataset}`);
    }
    if (summary.num_near_hull) lines.push(`${summary.num_near_hull} within 0.1 eV/atom of the hull`);
    if (summary.predicted) {
      const spread = summary.predicted;
      lines.push(`predicted ${format(spread.min)} to ${format(spread.max)} ${unit}, median ${format(spread.quantiles["0.5"])}`);
    }
    $("job-summary").textContent = lines.join(" · ");
  }
}

$("job-cancel").addEventListener("click", async () => {
  const view = page.job;
  $("job-cancel").disabled = true;
  try {
    await api(`/jobs/${view.id}`, { method: "DELETE" });
  } catch (error) {
    $("job-error").textContent = error.message;
  } finally {
    $("job-cancel").disabled = false;
  }
});

async function loadStructures(view, job) {
  const items = [];
  let path = `/jobs/${view.id}/structures?offset=0&limit=${PAGE_SIZE}`;
  try {
    while (path) {
      const structurePage = await (await api(path)).json();
      items.push(...structurePage.items);
      path = structurePage.links.next?.href;
    }
  } catch (error) {
    if (view === page.job) $("job-error").textContent = error.message;
    return;
  }
  if (view !== page.job) return;
  Object.assign(view, { items, unit: job.model.unit, target: job.request.target, dataset: job.model.dataset });
  $("results").hidden = false;
  drawTable();
  const first = items.find((item) => item.valid) ?? items[0];
  if (first) selectStructure(first.index);
}

// --- The table -----------------------------------------------------------------------------

const COLUMNS = [
  { key: "index", label: "#", sortValue: (s) => s.index, text: (s) => s.index },
  { key: "formula", label: "Formula", sortValue: (s) => s.formula, text: (s) => s.formula },
  { key: "num_atoms", label: "Atoms", sortValue: (s) => s.num_atoms, text: (s) => s.num_atoms },
  { key: "space_group", label: "Space group", sortValue: (s) => s.space_group_number,
    text: (s) => s.space_group },
  { key: "predicted_property", label: "Predicted", sortValue: (s) => s.predicted_property,
    text: (s) => format(s.predicted_property), title: (s) => s.prediction_note },
  { key: "predicted_e_above_hull", label: "Above hull (eV/atom)", sortValue: (s) => s.predicted_e_above_hull,
    text: (s) => format(s.predicted_e_above_hull), onlyWhen: (s) => s.predicted_e_above_hull != null,
    title: () => "above the hull of the dataset's compounds, from the predicted formation energy" },
  { key: "valid", label: "Valid", sortValue: (s) => s.valid,
    text: (s) => (s.valid === null ? "unchecked" : s.valid ? "yes" : "no"),
    title: (s) => s.invalid_reason },
  { key: "known_as", label: "Known as", sortValue: (s) => (s.novel === null ? null : s.known_as?.material_id ?? ""),
    text: knownAs, title: (s) => (s.known_as ? `matches ${s.known_as.material_id} of the ${s.known_as.split} split` : null) },
];

// "new" when no structure of the dataset matches it, its id when one does.
function knownAs(structure) {
  if (structure.novel === null || structure.novel === undefined) return "unchecked";
  return structure.novel ? "new" : structure.known_as.material_id;
}

function compareStructures(column, descending) {
  return (a, b) => {
    const x = column.sortValue(a), y = column.sortValue(b);
    if (x === null || y === null) return (x === null) - (y === null); // unknown last, either way
    const order = typeof x === "string" ? x.localeCompare(y) : Number(x) - Number(y);
    return (descending ? -order : order) || a.index - b.index;
  };
}

function visibleStructures(view) {
  const text = $("filter-text").value.trim().toLowerCase();
  const validOnly = $("filter-valid").checked;
  const atOrBelow = $("filter-target").checked;
  const column = COLUMNS.find((c) => c.key === view.sortKey);
  return view.items
    .filter((s) => !text || s.formula.toLowerCase().includes(text) || s.space_group.toLowerCase().includes(text))
    .filter((s) => !validOnly || s.valid === true)
    .filter((s) => !atOrBelow || (s.predicted_property !== null && s.predicted_property <= view.target))
    .sort(compareStructures(column, view.descending));
}

function drawTable() {
  const view = page.job;
  // A column with nothing to show for this job's dataset is left out.
  const columns = COLUMNS.filter((column) => !column.onlyWhen || view.items.some(column.onlyWhen));
  const header = columns.map((column) => {
    const cell = document.createElement("th");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.key = column.key;
    button.textContent = column.key === "predicted_property" ? `${column.label} (${view.unit})` : column.label;
    cell.append(button);
    cell.setAttribute("aria-sort", column.key !== view.sortKey ? "none" : view.descending ? "descending" : "ascending");
    return cell;
  });
  $("structures").tHead.rows[0].replaceChildren(...header);
  const shown = visibleStructures(view);
  $("structures").tBodies[0].replaceChildren(...shown.map((structure) => {
    const row = document.createElement("tr");
    row.dataset.index = structure.index;
    row.tabIndex = 0;
    if (structure.index === view.selected) row.className = "selected";
    if (structure.valid === false) row.classList.add("invalid");
    for (const column of columns) {
      const cell = row.insertCell();
      cell.textContent = column.text(structure);
      const title = column.title?.(structure);
      if (title) cell.title = title;
    }
    return row;
  }));
  $("row-count").textContent = `${shown.length} of ${view.items.length} shown`;
}

$("structures").tHead.addEventListener("click", (event) => {
  const key = event.target.dataset?.key;
  if (!key) return;
  const view = page.job;
  view.descending = view.sortKey === key ? !view.descending : false;
  view.sortKey = key;
  drawTable();
});

for (const id of ["filter-text", "filter-valid", "filter-target"]) {
  $(id).addEventListener("input", drawTable);
}

function rowIndexOf(event) {
  const row = event.target.closest("tr[data-index]");
  return row ? Number(row.dataset.index) : null;
}

$("structures").tBodies[0].addEventListener("click", (event) => {
  const index = rowIndexOf(event);
  if (index !== null) selectStructure(index);
});

$("structures").tBodies[0].addEventListener("keydown", (event) => {
  const index = rowIndexOf(event);
  if (index !== null && (event.key === "Enter" || event.key === " ")) {
    event.preventDefault();
    selectStructure(index);
  }
});

// --- The selected structure ----------------------------------------------------------------

function selectStructure(index) {
  const view = page.job;
  view.selected = index;
  for (const row of $("structures").tBodies[0].rows) {
    row.classList.toggle("selected", Number(row.dataset.index) === index);
  }
  const structure = view.items.find((item) => item.index === index);
  describeStructure(structure, view.unit);
  drawStructure(structure);
}

function describeStructure(structure, unit) {
  const lattice = structure.lattice;
  const facts = [
    ["Structure", `#${structure.index}: ${structure.full_formula}`],
    ["Space group", `${structure.space_group} (${structure.space_group_number})`],
    ["Generated cell", `a ${format(lattice.a, 3)}, b ${format(lattice.b, 3)}, c ${format(lattice.c, 3)} Å; ` +
      `α ${format(lattice.alpha, 1)}, β ${format(lattice.beta, 1)}, γ ${format(lattice.gamma, 1)}°; ` +
      `V ${format(lattice.volume, 2)} Å³`],
    ["Predicted", structure.predicted_property === null
      ? `none (${structure.prediction_note ?? "no oracle"})`
      : `${format(structure.predicted_property)} ${unit}`],
    ...(structure.predicted_e_above_hull == null ? [] : [["Above hull",
      `${format(structure.predicted_e_above_hull)} eV/atom above the hull of ${page.job.dataset}'s ` +
      "compounds, from the predicted formation energy (a lower bound: the Materials Project holds more phases)"]]),
    ["Valid", structure.valid === null ? "unchecked"
      : structure.valid ? "yes" : `no: ${structure.invalid_reason}`],
    ["Known as", structure.known_as ? `${structure.known_as.material_id} (${structure.known_as.split} split)`
      : structure.novel ? "new: no structure of the dataset matches it" : "unchecked",
      materialsProjectPage(structure.known_as?.material_id)],
  ];
  const relaxed = structure.relaxation;
  if (relaxed) {
    facts.push(["Relaxed (CHGNet)", relaxed.error ? `no: ${relaxed.error}`
      : `${format(relaxed.energy_before_ev_per_atom)} → ${format(relaxed.energy_after_ev_per_atom)} eV/atom in ` +
        `${relaxed.steps} steps${relaxed.converged ? "" : " (not converged)"}; moved ` +
        (relaxed.rms_displacement === null ? "beyond matching" : format(relaxed.rms_displacement)) +
        `; predicted after: ${relaxed.predicted_property === null || relaxed.predicted_property === undefined
          ? "none" : `${format(relaxed.predicted_property)} ${unit}`}` +
        (relaxed.predicted_e_above_hull == null ? "" : `, ${format(relaxed.predicted_e_above_hull)} eV/atom above the hull`)]);
  }
  $("download-cif-relaxed").hidden = !structure.relaxed_cif;
  $("structure-info").replaceChildren(...facts.flatMap(([term, description, href]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = term;
    dd.textContent = description;
    if (href) {
      const link = Object.assign(document.createElement("a"), { href, target: "_blank", rel: "noopener" });
      link.textContent = "Materials Project";
      dd.append(" · ", link);
    }
    return [dt, dd];
  }));
}

// mp_20's ids are Materials Project ids: a link to the entry (a navigation, nothing is loaded here).
function materialsProjectPage(materialId) {
  return /^mp-\d+$/.test(materialId ?? "") ? `https://next-gen.materialsproject.org/materials/${materialId}` : null;
}

function drawStructure(structure) {
  const element = $("viewer");
  delete element.dataset.shown;
  $("viewer-message").textContent = "";
  if (!page.viewer) page.viewer = $3Dmol.createViewer(element, { backgroundColor: "white" });
  const viewer = page.viewer;
  viewer.clear();
  try {
    // The symmetrised CIF's cell (the one "Download CIF" gives), its sites expanded by the
    // space group's operations and wrapped into the cell.
    const model = viewer.addModel(structure.cif, "cif",
      { doAssembly: true, duplicateAssemblyAtoms: true, wrapAtoms: true });
    viewer.setStyle({}, { sphere: { scale: 0.25, colorscheme: "Jmol" },
      stick: { radius: 0.12, colorscheme: "Jmol" } });
    viewer.addUnitCell(model, { box: { color: "#555555" }, alabel: "a", blabel: "b", clabel: "c" });
    // 1 adds the periodic images on the cell's faces, edges and corners, as crystal viewers do.
    const repeat = $("supercell").checked ? 2 : 1;
    viewer.replicateUnitCell(repeat, repeat, repeat, model, true);
    viewer.zoomTo();
    viewer.rotate(-20, "x"); // tilted off the c axis, so the cell reads as three-dimensional
    viewer.rotate(25, "y");
    viewer.render();
    element.dataset.shown = structure.index;
  } catch (error) {
    $("viewer-message").textContent = `This cell cannot be drawn: ${error.message}`;
  }
}

$("supercell").addEventListener("change", () => {
  const view = page.job;
  if (view && view.selected !== null) drawStructure(view.items.find((item) => item.index === view.selected));
});

// --- Downloads -----------------------------------------------------------------------------

// Fetched rather than linked, so the API key goes along when the server wants one.
async function download(path, button) {
  button.disabled = true;
  try {
    const response = await api(path);
    const disposition = response.headers.get("Content-Disposition") ?? "";
    const name = /filename="([^"]+)"/.exec(disposition)?.[1] ?? path.split("/").pop();
    const url = URL.createObjectURL(await response.blob());
    const link = Object.assign(document.createElement("a"), { href: url, download: name });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), DOWNLOAD_URL_LIFETIME_MS);
  } catch (error) {
    $("job-error").textContent = error.message;
  } finally {
    button.disabled = false;
  }
}

function selectedLinks() {
  const view = page.job;
  return view.items.find((item) => item.index === view.selected).links;
}

$("download-bundle").addEventListener("click", (event) => {
  download(`/jobs/${page.job.id}/bundle.zip`, event.currentTarget);
});
$("download-cif").addEventListener("click", (event) => {
  download(selectedLinks().cif.href, event.currentTarget);
});
$("download-cif-p1").addEventListener("click", (event) => {
  download(selectedLinks().cif_p1.href, event.currentTarget);
});
$("download-cif-relaxed").addEventListener("click", (event) => {
  download(selectedLinks().cif_relaxed.href, event.currentTarget);
});

function format(value, digits = 3) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

start();
