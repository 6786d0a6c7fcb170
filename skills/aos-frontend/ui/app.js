// The AOS web console: plain ES module, no build step. Everything goes through the
// aos-frontend service (`/api/call`, `/api/events`, `/api/dispatches/{id}/stream`),
// which holds the kernel token. DOM is built with `h()` — text is always set as text,
// never parsed as HTML.

// Uncaught errors are kept for the browser test (and shown in the console as usual).
window.scriptErrors = [];
window.addEventListener('error', (e) => window.scriptErrors.push(String(e.message)));
window.addEventListener('unhandledrejection', (e) => window.scriptErrors.push(String(e.reason?.message ?? e.reason)));

const main = document.getElementById('main');
const banner = document.getElementById('banner');
const asksBadge = document.getElementById('asks');

// ---------------------------------------------------------------------------------------
// Plumbing: calls, the event stream, the banner
// ---------------------------------------------------------------------------------------

export async function call(op, params = {}) {
  let reply;
  try {
    reply = await fetch('/api/call', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-aos-ui': '1' },
      body: JSON.stringify({ op, params }),
    });
  } catch (e) {
    setDown(true);
    throw new Error(`the UI server is unreachable (${e.message})`);
  }
  const envelope = await reply.json().catch(() => ({ ok: false, error: { message: `HTTP ${reply.status}` } }));
  if (reply.status === 502) setDown(true);
  if (!envelope.ok) throw new Error(`${op}: ${envelope.error?.code ?? 'error'}: ${envelope.error?.message ?? ''}`);
  return envelope.data;
}

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const pill = (text) => h('span', { class: `pill ${text}` }, text);
const when = (ts) => (ts ? new Date(ts).toLocaleString() : '');
function errorBox(e) { return h('div', { class: 'error', role: 'alert' }, e.message ?? String(e)); }

let down = false;
function setDown(value) {
  if (down === value) return;
  down = value;
  banner.hidden = !value;
  if (value) waitForKernel();
}

async function waitForKernel() {
  while (down) {
    await new Promise((r) => setTimeout(r, 1000));
    try {
      const r = await fetch('/api/health');
      if (r.ok) { down = false; banner.hidden = true; connectEvents(); route(); }
    } catch { /* still down */ }
  }
}

// One event stream for the whole page; views subscribe by name prefix.
const listeners = new Set();
let source = null;
let lastEventId = '';
export const seenEvents = [];

function connectEvents() {
  if (source) source.close();
  const url = lastEventId ? `/api/events?lastEventId=${encodeURIComponent(lastEventId)}` : '/api/events';
  source = new EventSource(url);
  source.onopen = () => setDown(false);
  source.onerror = () => {
    // A lost connection or an error status: show the banner and retry when it is back.
    source.close();
    source = null;
    setDown(true);
  };
  const deliver = (e) => {
    if (e.lastEventId) lastEventId = e.lastEventId;
    let event;
    try { event = JSON.parse(e.data); } catch { return; }
    seenEvents.push(event);
    if (seenEvents.length > 500) seenEvents.shift();
    for (const l of listeners) if (event.name?.startsWith(l.prefix)) l.fn(event);
  };
  // The UI's server drops the kernel's `event:` lines (the name is in the data), so
  // every event, whatever its name (`skill.<name>.*`, `context.*`, …), arrives here.
  source.addEventListener('message', deliver);
}

function on(prefix, fn) {
  const l = { prefix, fn };
  listeners.add(l);
  return () => listeners.delete(l);
}

// ---------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------

let cleanup = [];
async function route() {
  for (const c of cleanup) c();
  cleanup = [];
  const [view, id] = location.hash.replace(/^#\/?/, '').split('/');
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.view === (view || 'agents'));
  main.replaceChildren();
  document.body.dataset.view = '';
  try {
    switch (view || 'agents') {
      case 'agents': await agentsView(); break;
      case 'agent': await agentView(id); break;
      case 'session': await sessionView(id); break;
      case 'history': await historyView(id); break;
      case 'skills': await skillsView(); break;
      case 'activity': await activityView(); break;
      case 'usage': await usageView(); break;
      default: main.append(h('p', {}, 'Nothing here. '), h('a', { href: '#/agents' }, 'Agents'));
    }
  } catch (e) {
    main.append(errorBox(e));
  }
  document.body.dataset.view = view || 'agents';
}
window.addEventListener('hashchange', route);

// ---------------------------------------------------------------------------------------
// Agents
// ---------------------------------------------------------------------------------------

async function agentsView() {
  const list = h('tbody');
  const render = async () => {
    const page = await call('agent.list', { limit: 1000 });
    list.replaceChildren(...page.items.map((a) => h('tr', { 'data-agent': a.agentId },
      h('td', {}, h('a', { href: `#/agent/${a.agentId}` }, a.displayName)),
      h('td', {}, pill(a.status)),
      h('td', { class: 'opt small muted' }, a.model ?? 'default model'),
      h('td', { class: 'opt small' }, `${a.usage.totalTokens} tokens · ${a.usage.dispatches} dispatches`),
    )));
    if (!page.items.length) list.append(h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'No agents yet: create one.')));
  };
  const name = h('input', { placeholder: 'Name', id: 'new-agent-name', 'aria-label': 'New agent name', required: true });
  const model = h('input', { placeholder: 'Model (provider/model, optional)', 'aria-label': 'Model' });
  const status = h('span', { class: 'small muted' });
  const form = h('form', { class: 'row', onsubmit: async (e) => {
    e.preventDefault();
    status.replaceChildren();
    try {
      const params = { displayName: name.value.trim() };
      if (model.value.trim()) params.model = model.value.trim();
      const agent = await call('agent.create', params);
      name.value = '';
      location.hash = `#/agent/${agent.agentId}`;
    } catch (err) { status.replaceChildren(errorBox(err)); }
  } }, name, model, h('button', { class: 'primary', type: 'submit', id: 'create-agent' }, 'Create agent'), status);
  main.append(h('h1', {}, 'Agents'), h('div', { class: 'panel' }, form),
    h('div', { class: 'panel' }, h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Agent'), h('th', {}, 'Status'), h('th', { class: 'opt' }, 'Model'), h('th', { class: 'opt' }, 'Usage'))), list)));
  await render();
  cleanup.push(on('agent.', () => render().catch(() => {})));
}

async function agentView(agentId) {
  const agent = await call('agent.get', { agentId });
  const sessions = h('tbody');
  const render = async () => {
    const page = await call('session.list', { agentId, limit: 1000 });
    sessions.replaceChildren(...page.items.map((s) => h('tr', {},
      h('td', {}, h('a', { href: `#/session/${s.sessionId}` }, s.title || s.sessionId)),
      h('td', {}, pill(s.status), ' ', pill(s.phase)),
      h('td', { class: 'opt small muted' }, when(s.updatedAt)),
      h('td', { class: 'opt' }, h('a', { href: `#/history/${s.sessionId}` }, 'history')),
    )));
  };
  const title = h('input', { placeholder: 'Session title (optional)', 'aria-label': 'Session title' });
  const newSession = h('form', { class: 'row', onsubmit: async (e) => {
    e.preventDefault();
    const s = await call('session.create', { agentId, ...(title.value.trim() ? { title: title.value.trim() } : {}) });
    location.hash = `#/session/${s.sessionId}`;
  } }, title, h('button', { class: 'primary', id: 'create-session', type: 'submit' }, 'New session'));
  // Defaults: skill rules (every field kept as it is), model, priority, budgets.
  const rules = rulesEditor(agent.defaultSkills ?? []);
  const model = h('input', { value: agent.model ?? '', placeholder: 'provider/model', 'aria-label': 'Model' });
  const priority = h('input', { type: 'number', value: agent.priority ?? 0, style: 'width:90px', 'aria-label': 'Priority' });
  const budgets = h('input', { value: agent.budgets ? JSON.stringify(agent.budgets) : '', placeholder: '{"tokensPerDay": 200000}', 'aria-label': 'Budgets (JSON)' });
  const saved = h('span', { class: 'small muted', id: 'defaults-status' });
  const defaults = h('form', { id: 'defaults', onsubmit: async (e) => {
    e.preventDefault();
    saved.replaceChildren();
    try {
      let parsed = null;
      try { parsed = budgets.value.trim() ? JSON.parse(budgets.value) : null; }
      catch (err) { throw new Error(`budgets: not JSON (${err.message})`); }
      await call('agent.update', {
        agentId,
        defaultSkills: rules.value(),
        model: model.value.trim() || null,
        priority: Number(priority.value) || 0,
        budgets: parsed,
      });
      saved.textContent = 'saved';
    } catch (err) { saved.replaceChildren(errorBox(err)); }
  } }, rules.el,
  h('div', { class: 'row' }, h('label', { class: 'small' }, 'model ', model), h('label', { class: 'small' }, 'priority ', priority), h('label', { class: 'small' }, 'budgets ', budgets), h('button', { type: 'submit', id: 'save-defaults' }, 'Save defaults'), saved));
  const archived = h('span', { class: 'small' });
  const archive = h('button', { class: 'danger', id: 'archive-agent', onclick: async () => {
    if (!confirm(`Archive ${agent.displayName}? Its sessions become read-only.`)) return;
    try {
      await call('agent.archive', { agentId });
      location.hash = '#/agents';
    } catch (err) { archived.replaceChildren(errorBox(err)); }
  } }, 'Archive agent');
  main.append(h('h1', {}, agent.displayName, ' ', pill(agent.status)),
    h('div', { class: 'panel' }, newSession), h('div', { class: 'panel' }, h('h2', {}, 'Defaults'), defaults),
    h('div', { class: 'panel' }, h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Session'), h('th', {}, 'State'), h('th', { class: 'opt' }, 'Updated'), h('th', { class: 'opt' }, ''))), sessions)),
    agent.status === 'active' ? h('div', { class: 'row' }, archive, archived) : '');
  await render();
  cleanup.push(on('session.', (e) => { if (e.agentId === agentId) render().catch(() => {}); }));
}

// Default skill rules, one row each: the name, `load` and `start` (unset, enable or
// disable). Fields the editor does not show (`pinned`, anything newer) are kept as read.
function rulesEditor(initial) {
  const rows = h('tbody', { id: 'rules' });
  const toggle = (field, value) => h('select', { class: field, 'aria-label': field },
    ['', 'enable', 'disable'].map((v) => h('option', { value: v, selected: (value ?? '') === v }, v || 'inherit')));
  const add = (rule) => {
    const load = toggle('load', rule.load);
    const start = toggle('start', rule.start);
    const row = h('tr', { 'data-rule': rule.name },
      h('td', {}, h('code', {}, rule.name), rule.pinned ? [' ', pill('pinned')] : null),
      h('td', {}, load), h('td', {}, start),
      h('td', {}, h('button', { type: 'button', class: 'small remove', 'aria-label': `Remove ${rule.name}`, onclick: () => row.remove() }, 'Remove')));
    row.rule = () => {
      const out = { ...rule };
      for (const [field, select] of [['load', load], ['start', start]]) {
        if (select.value) out[field] = select.value; else delete out[field];
      }
      return out;
    };
    rows.append(row);
  };
  for (const r of initial) add(r);
  const name = h('input', { id: 'new-rule', placeholder: 'skill name', 'aria-label': 'Skill to add', size: 14 });
  const addOne = () => {
    const n = name.value.trim();
    if (!n || [...rows.children].some((r) => r.dataset.rule === n)) return;
    add({ name: n, load: 'enable' });
    name.value = '';
  };
  name.addEventListener('keydown', (e) => { if (e.key === 'Enter') { e.preventDefault(); addOne(); } });
  const el = h('div', {},
    h('table', { class: 'rules' }, h('thead', {}, h('tr', {}, h('th', {}, 'Skill'), h('th', {}, 'Load'), h('th', {}, 'Start'), h('th', {}, ''))), rows),
    h('div', { class: 'row' }, name, h('button', { type: 'button', id: 'add-rule', onclick: addOne }, 'Add skill')));
  return { el, value: () => [...rows.children].map((r) => r.rule()) };
}

// ---------------------------------------------------------------------------------------
// Chat
// ---------------------------------------------------------------------------------------

function partView(part) {
  switch (part.type) {
    case 'text': return h('div', { class: 'text' }, part.text);
    case 'bash': return toolView(part.toolCallId, part.command, part);
    case 'skill-load': return h('div', { class: 'small muted' }, `skill loaded: ${part.name} (${part.cause})`);
    case 'skill-unload': return h('div', { class: 'small muted' }, `skill unloaded: ${part.name}`);
    case 'interrupt': return h('div', { class: 'small muted' }, `interrupted: ${part.reason}`);
    case 'compaction-marker': return h('div', { class: 'small muted' }, `— compaction boundary: #${part.fromSeq}–#${part.toSeq} —`);
    case 'compaction-summary': return h('div', {}, h('div', { class: 'small muted' }, 'summary'), h('div', { class: 'text' }, part.text));
    case 'bootstrap': return h('div', { class: 'small muted' }, `bootstrap ${part.phase}`);
    case 'error': return h('div', { class: 'error' }, `${part.source}: ${part.message}`);
    case 'meta': return h('div', { class: 'small muted', title: JSON.stringify(part.data) }, `${part.source}: ${Object.keys(part.data ?? {}).join(', ')}`);
    default: return h('div', { class: 'small muted' }, part.type);
  }
}

function toolView(id, command, result) {
  const box = h('div', { class: 'tool', 'data-tool': id }, h('div', { class: 'cmd' }, '$ ', command));
  if (result) fillResult(box, result);
  return box;
}

function fillResult(box, r) {
  const output = r.output ?? r;
  const text = output.visibleResult ?? output.preview ?? '';
  const failed = r.state === 'output-error';
  box.querySelector('.result')?.remove();
  const shown = h('div', { class: 'result' },
    h('pre', {}, text || '(no output)'),
    r.errorText ? h('div', { class: 'error small' }, r.errorText) : null,
    failed ? pill('bad') : null);
  const contentId = output.contentId;
  if (contentId) {
    // A folded (stored) result: read it with `content.read`, 2000 lines at a time.
    let offset = null;
    const more = h('button', { class: 'small show-all', onclick: async () => {
      more.disabled = true;
      try {
        const c = await call('content.read', { contentId, offset: offset ?? 0, limit: 2000 });
        const pre = shown.querySelector('pre');
        if (offset === null) pre.textContent = c.content;
        else pre.textContent += (pre.textContent.endsWith('\n') ? '' : '\n') + c.content;
        offset = c.offset + c.lines;
        shown.dataset.expanded = String(offset);
        if (offset >= c.totalLines) more.remove();
        else { more.textContent = `show more (${c.totalLines - offset} more lines)`; more.disabled = false; }
      } catch (e) { more.replaceWith(errorBox(e)); }
    } }, output.sizeChars ? `show all (${output.sizeChars} characters)` : 'show all');
    shown.append(more);
  }
  box.append(shown);
}

function messageView(m) {
  const marker = m.parts.some((p) => ['bootstrap', 'skill-load', 'compaction-marker', 'interrupt', 'skill-unload'].includes(p.type));
  const kind = marker ? 'marker' : m.role;
  return h('div', { class: `msg ${kind}`, 'data-seq': m.seq },
    marker ? null : h('div', { class: 'who' }, `${m.role} · ${m.origin} · #${m.seq}`),
    m.parts.map((p) => partView(p)));
}

async function sessionView(sessionId) {
  const session = await call('session.get', { sessionId });
  const agent = await call('agent.get', { agentId: session.agentId });
  const chat = h('div', { class: 'chat', id: 'chat' });
  const phase = h('span', {}, pill(session.phase));
  const page = await call('session.history.list', { sessionId, limit: 200, descending: true });
  for (const m of page.items.reverse()) chat.append(messageView(m));
  // The newest seq on screen: history written by no followed dispatch is fetched after it.
  let shownSeq = page.items.at(-1)?.seq ?? 0;
  const input = h('textarea', { id: 'message', rows: 2, placeholder: 'Message (Enter sends · Shift+Enter new line · Esc interrupts)', 'aria-label': 'Message' });
  const interrupt = h('button', { id: 'interrupt', class: 'danger', disabled: session.phase !== 'dispatched', onclick: () => stop() }, 'Interrupt');
  const send = h('button', { id: 'send', class: 'primary', onclick: () => submit() }, 'Send');
  const note = h('div', { class: 'small muted', id: 'dispatch-status' });
  // Every dispatch of this session the page follows, by id, whoever started it (this
  // page, another tab, the CLI, aos-a2a, aos-cron): its user message and live answer.
  const turns = new Map();
  const ended = new Set();
  const seen = (seq) => { if (seq > shownSeq) shownSeq = seq; };

  async function stop() {
    try { await call('session.interrupt', { sessionId, reason: 'interrupted from the web UI' }); }
    catch (e) { note.replaceChildren(errorBox(e)); }
  }

  async function submit() {
    const content = input.value.trim();
    if (!content) return;
    input.value = '';
    const mine = userBubble(content, 'you · sending');
    chat.append(mine);
    try {
      const started = await call('session.dispatch', { sessionId, message: { role: 'user', content }, ifBusy: 'queue' });
      const turn = follow(started.dispatchId);
      turn.adopt(mine);
      if (started.status === 'queued') turn.queued(started.queuePosition ?? started.position);
      note.textContent = started.status === 'queued' ? `queued (position ${started.queuePosition ?? started.position ?? '?'})` : 'running';
    } catch (e) { mine.remove(); note.replaceChildren(errorBox(e)); input.value = content; }
  }

  function userBubble(text, who) {
    return h('div', { class: 'msg user' }, h('div', { class: 'who' }, who), h('div', { class: 'text' }, text));
  }

  // Messages written outside any followed dispatch (one that ended before the page saw
  // it start, an interrupt fact): read from history, one catch-up at a time.
  let catching = Promise.resolve();
  function catchUp() {
    catching = catching.then(async () => {
      const more = await call('session.history.list', { sessionId, fromSeq: shownSeq + 1, limit: 1000 });
      for (const m of more.items) if (m.seq > shownSeq) { chat.append(messageView(m)); seen(m.seq); }
    }).catch(() => {});
    return catching;
  }

  // `external`: started elsewhere, so its stream may turn out to be an old one's `done`.
  function follow(dispatchId, { external = false } = {}) {
    if (turns.has(dispatchId)) return turns.get(dispatchId);
    const who = h('div', { class: 'who' }, `${agent.displayName} · waiting`);
    const live = h('div', { class: 'msg assistant streaming', 'data-dispatch': dispatchId }, who);
    const box = h('div', { class: 'turn', 'data-turn': dispatchId }, live);
    let userEl = null;
    let text = null;
    let active = false;
    chat.append(box);
    const stream = new EventSource(`/api/dispatches/${dispatchId}/stream`);
    const turn = {
      // This page's own message: its bubble, unless the stream showed the message first.
      adopt(el) {
        if (!userEl) { userEl = el; box.prepend(el); return; }
        el.remove();
        userEl.querySelector('.who').textContent = `you · #${userEl.dataset.seq}`;
      },
      queued(position) { if (!active) { who.textContent = `${agent.displayName} · queued (position ${position ?? '?'})`; live.dataset.queued = ''; } },
      close() { stream.close(); },
    };
    turns.set(dispatchId, turn);
    const data = (e) => JSON.parse(e.data);
    const started = () => {
      if (active) return;
      active = true;
      delete live.dataset.queued;
      who.textContent = `${agent.displayName} · working`;
    };
    stream.addEventListener('delta', (e) => {
      started();
      if (!text) { text = h('div', { class: 'text' }); live.append(text); }
      text.textContent += data(e).text;
      live.dataset.deltas = String(Number(live.dataset.deltas ?? 0) + 1);
      live.scrollIntoView({ block: 'end' });
    });
    stream.addEventListener('tool_call', (e) => {
      started();
      const c = data(e);
      text = null;
      live.append(toolView(c.toolCallId, c.command));
    });
    stream.addEventListener('tool_result', (e) => {
      started();
      const r = data(e);
      seen(r.seq ?? 0);
      const tool = live.querySelector(`[data-tool="${CSS.escape(r.toolCallId)}"]`) ?? live.appendChild(toolView(r.toolCallId, ''));
      fillResult(tool, { state: r.state, errorText: r.errorText, output: { visibleResult: r.preview, contentId: r.contentId } });
    });
    stream.addEventListener('message', (e) => {
      started();
      const m = data(e);
      seen(m.seq ?? 0);
      if (m.role === 'user') {
        // This page's own message keeps its bubble; one sent elsewhere gets its own.
        if (userEl) userEl.querySelector('.who').textContent = `you · #${m.seq}`;
        else { userEl = userBubble(m.text, `user · #${m.seq}`); box.prepend(userEl); }
        userEl.dataset.seq = m.seq;
        return;
      }
      if (m.role !== 'assistant') return;
      if (!text) { text = h('div', { class: 'text' }); live.append(text); }
      text.textContent = m.text;
      text = null;
    });
    stream.addEventListener('error', (e) => {
      if (e.data) live.append(h('div', { class: 'error' }, data(e).message));
    });
    stream.addEventListener('done', (e) => {
      const d = data(e);
      stream.close();
      ended.add(dispatchId);
      if (external && !active) {
        // An old dispatch (a replayed event): its messages are history by now.
        box.remove();
        turns.delete(dispatchId);
        catchUp();
        return;
      }
      seen(d.finalMessageSeq ?? 0);
      live.classList.remove('streaming');
      delete live.dataset.queued;
      who.textContent = `${agent.displayName} · ${d.status} · ${d.turns} turns · ${d.usage.totalTokens} tokens`;
      live.dataset.status = d.status;
      note.textContent = d.status;
    });
    return turn;
  }

  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); submit(); }
    if (e.key === 'Escape') stop();
  });
  main.append(
    h('div', { class: 'row' }, h('h1', { class: 'grow' }, session.title || 'Session', ' ', h('span', { class: 'small muted' }, `${agent.displayName} · ${sessionId}`)), phase,
      h('a', { href: `#/history/${sessionId}` }, 'history')),
    chat, note, h('div', { class: 'composer' }, input, send, interrupt));
  chat.lastElementChild?.scrollIntoView({ block: 'end' });
  input.focus();
  const showPhase = (p) => { phase.replaceChildren(pill(p)); interrupt.disabled = p !== 'dispatched'; };
  const refreshPhase = () => call('session.get', { sessionId }).then((s) => showPhase(s.phase)).catch(() => {});
  // Any event about this session naming a dispatch the page does not follow yet (the
  // phase turning `dispatched`, a turn, a model call) starts following it.
  cleanup.push(on('', (e) => {
    if (e.sessionId !== sessionId) return;
    const id = e.payload?.dispatchId;
    // A phase change names the new phase; other changes are read back.
    if (e.name === 'session.updated' && e.payload?.phase) showPhase(e.payload.phase);
    else if (e.name === 'session.updated' || e.name === 'session.interrupted') refreshPhase();
    if (!id) return;
    if (e.name === 'session.dispatch.after') {
      ended.add(id);
      if (!turns.has(id)) catchUp();
    } else if (!turns.has(id) && !ended.has(id)) {
      follow(id, { external: true });
    }
  }));
  cleanup.push(() => { for (const t of turns.values()) t.close(); });
  // Dispatches already running or queued when the page opened: the running one's
  // messages so far are replaced by its stream, which starts from its beginning.
  const [running, queued] = await Promise.all([
    call('dispatch.list', { sessionId, status: 'running', limit: 1000 }),
    call('dispatch.list', { sessionId, status: 'queued', limit: 1000 }),
  ]);
  for (const d of running.items) {
    if (d.userMessageSeq) for (const m of [...chat.querySelectorAll(':scope > .msg[data-seq]')]) if (Number(m.dataset.seq) >= d.userMessageSeq) m.remove();
    follow(d.dispatchId, { external: true });
  }
  for (const d of queued.items) follow(d.dispatchId).queued(d.waiting?.position);
}

// ---------------------------------------------------------------------------------------
// History inspector
// ---------------------------------------------------------------------------------------

async function historyView(sessionId) {
  const rows = h('tbody');
  let cursor = null;
  const more = h('button', { onclick: () => load() }, 'Load more');
  async function load() {
    const page = await call('session.history.list', { sessionId, limit: 500, ...(cursor ? { cursor } : {}) });
    for (const m of page.items) {
      const special = m.parts.map((p) => p.type).find((t) => ['compaction-marker', 'compaction-summary', 'skill-load', 'interrupt'].includes(t));
      rows.append(h('tr', { class: special ? `hist ${special}` : 'hist' },
        h('td', {}, `#${m.seq}`), h('td', {}, `${m.role}/${m.origin}`),
        h('td', { class: 'opt small muted' }, when(m.createdAt)),
        h('td', {}, m.parts.map((p) => h('div', {}, special ? pill(p.type) : h('span', { class: 'small muted' }, `${p.type} `), ' ', summary(p))))));
    }
    cursor = page.nextCursor;
    more.hidden = !cursor;
  }
  main.append(h('h1', {}, 'History ', h('a', { class: 'small', href: `#/session/${sessionId}` }, 'back to chat')),
    h('div', { class: 'panel' }, h('table', { id: 'history' }, h('thead', {}, h('tr', {}, h('th', {}, 'Seq'), h('th', {}, 'Role/origin'), h('th', { class: 'opt' }, 'Time'), h('th', {}, 'Parts'))), rows)), more);
  await load();
}

function summary(p) {
  switch (p.type) {
    case 'text': return p.text.length > 300 ? `${p.text.slice(0, 300)}…` : p.text;
    case 'bash': return `$ ${p.command} → ${p.state}${p.output?.contentId ? ` (stored ${p.output.contentId})` : ''}`;
    case 'skill-load': return `${p.name} (${p.cause})`;
    case 'compaction-marker': return `#${p.fromSeq}–#${p.toSeq}${p.auto ? ' (auto)' : ''}`;
    case 'compaction-summary': return p.text.slice(0, 300);
    case 'interrupt': return p.reason;
    case 'bootstrap': return p.phase;
    case 'error': return `${p.source}: ${p.message}`;
    case 'meta': return `${p.source} ${JSON.stringify(p.data)}`.slice(0, 300);
    default: return '';
  }
}

// ---------------------------------------------------------------------------------------
// Skills and services
// ---------------------------------------------------------------------------------------

async function skillsView() {
  const skills = h('tbody', { id: 'skills' });
  const services = h('tbody', { id: 'services' });
  const render = async () => {
    const [list, running, hooks] = await Promise.all([call('skill.list'), call('service.list'), call('hook.list')]);
    skills.replaceChildren(...list.map((s) => h('tr', { 'data-skill': s.name },
      h('td', {}, h('strong', {}, s.name)),
      h('td', { class: 'description' }, s.error ? h('span', { class: 'error' }, `${s.error.file}:${s.error.line ?? 1}: ${s.error.message}`) : s.description),
      h('td', {}, !s.service ? h('span', { class: 'small muted' }, 'text')
        : running.some((r) => r.skill === s.name && r.state === 'running') ? pill('running')
          : h('button', { onclick: () => call('skill.start', { name: s.name }).then(render).catch((e) => alert(e.message)) }, 'Start')))));
    services.replaceChildren(...running.map((s) => h('tr', {},
      h('td', {}, s.skill), h('td', {}, pill(s.state)), h('td', { class: 'opt small' }, `${s.owner.ownerType}${s.owner.ownerId ? ` ${s.owner.ownerId}` : ''}`),
      h('td', { class: 'opt small' }, `pid ${s.pid ?? '-'} · ${s.restarts} restarts`),
      h('td', { class: 'small' }, hooks.filter((r) => r.serviceId === s.serviceId).map((r) => r.hook).join(', ') || '—',
        s.lastError ? h('div', { class: 'error' }, s.lastError) : null),
      h('td', {}, s.state === 'running' ? h('button', { onclick: () => call('skill.stop', { serviceId: s.serviceId }).then(render).catch((e) => alert(e.message)) }, 'Stop') : ''))));
  };
  main.append(h('h1', {}, 'Skills'), h('div', { class: 'panel' }, h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Skill'), h('th', {}, 'Description'), h('th', {}, ''))), skills)),
    h('h2', {}, 'Services'), h('div', { class: 'panel' }, h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Skill'), h('th', {}, 'State'), h('th', { class: 'opt' }, 'Owner'), h('th', { class: 'opt' }, 'Process'), h('th', {}, 'Hooks'), h('th', {}, ''))), services)));
  await render();
  cleanup.push(on('skill.', () => render().catch(() => {})));
  cleanup.push(on('service.', () => render().catch(() => {})));
}

// ---------------------------------------------------------------------------------------
// Activity: events and approvals
// ---------------------------------------------------------------------------------------

async function pendingAsks() {
  try { return (await call('aos-guard.pending')).items; } catch { return []; }
}

async function refreshAsks() {
  const items = await pendingAsks();
  asksBadge.hidden = !items.length;
  asksBadge.textContent = String(items.length);
  return items;
}

async function activityView() {
  const asks = h('div', { id: 'approvals' });
  const log = h('div', { class: 'events', id: 'events' });
  const filter = h('input', { id: 'event-filter', class: 'grow', type: 'search', placeholder: 'Filter: part of a name, or several separated by spaces (e.g. session. skill.aos-cron)', 'aria-label': 'Filter events' });
  const count = h('span', { class: 'small muted', id: 'event-count' });
  const line = (e) => h('div', { 'data-name': e.name }, `${e.ts ?? ''} ${e.name} ${e.sessionId ?? e.agentId ?? ''} ${JSON.stringify(e.payload ?? {}).slice(0, 300)}`);
  // Every event the page received (the stream is not filtered by name), newest first.
  const renderLog = () => {
    const words = filter.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const shown = seenEvents.filter((e) => !words.length || words.some((w) => (e.name ?? '').toLowerCase().includes(w)));
    log.replaceChildren(...shown.slice(-300).reverse().map(line));
    count.textContent = `${shown.length} of ${seenEvents.length} events`;
  };
  filter.addEventListener('input', renderLog);
  const renderAsks = async () => {
    const items = await refreshAsks();
    asks.replaceChildren(...(items.length ? items.map((a) => h('div', { class: 'panel ask', 'data-ask': a.id },
      h('div', { class: 'row' }, h('code', { class: 'grow' }, a.command), pill(a.rule)),
      h('div', { class: 'small muted' }, `${a.reason} · session ${a.sessionId} · until ${when(a.deadline)}`),
      h('div', { class: 'row' },
        h('button', { class: 'primary approve', onclick: () => call('aos-guard.decide', { id: a.id, decision: 'allow', reason: 'approved in the web UI' }).then(renderAsks) }, 'Approve'),
        h('button', { class: 'danger deny', onclick: () => call('aos-guard.decide', { id: a.id, decision: 'deny', reason: 'denied in the web UI' }).then(renderAsks) }, 'Deny')))) : [h('p', { class: 'muted' }, 'No commands wait for approval.')]));
  };
  main.append(h('h1', {}, 'Activity'), h('h2', {}, 'Waiting for approval'), asks, h('h2', {}, 'Events'), h('div', { class: 'panel' }, h('div', { class: 'row' }, filter, count), log));
  renderLog();
  await renderAsks();
  cleanup.push(on('', () => renderLog()));
  cleanup.push(on('skill.aos-guard.', () => renderAsks().catch(() => {})));
}

// ---------------------------------------------------------------------------------------
// Usage
// ---------------------------------------------------------------------------------------

// Every page of a list, following `nextCursor`.
async function allPages(op, params) {
  const items = [];
  let cursor = params.cursor;
  for (;;) {
    const page = await call(op, { ...params, limit: 1000, ...(cursor ? { cursor } : {}) });
    items.push(...page.items);
    if (!page.nextCursor) return items;
    cursor = page.nextCursor;
  }
}

// Ids are `dsp_` and a UUIDv7 in hex, and lists are ordered by id with the last id as
// the cursor (docs/data-model.md): the id of a dispatch queued at `ms`, all zeros after
// the time, is a cursor that starts the list there — so the view reads the last day's
// dispatches without paging through older ones.
function cursorAt(ms) {
  return `dsp_${Math.max(0, Math.floor(ms)).toString(16).padStart(12, '0')}${'0'.repeat(20)}`;
}

const COLORS = ['#2f5bea', '#16794c', '#a15c00', '#b42318', '#6941c6', '#0e7490'];
const usd = (v) => `$${(v ?? 0).toFixed(4)}`;

// A stacked bar per hour, one colour per agent. `value(d)` is what a dispatch adds.
function hourlyChart({ metric, title, dispatches, agentIds, names, value, format }) {
  const buckets = new Map();
  for (const d of dispatches) {
    const v = value(d);
    if (!v) continue;
    const hour = new Date(d.endedAt); hour.setMinutes(0, 0, 0);
    const row = buckets.get(hour.getTime()) ?? {};
    row[d.agentId] = (row[d.agentId] ?? 0) + v;
    buckets.set(hour.getTime(), row);
  }
  const keys = [...buckets.keys()].sort((a, b) => a - b).slice(-24);
  const max = Math.max(Number.MIN_VALUE, ...keys.map((k) => Object.values(buckets.get(k)).reduce((a, b) => a + b, 0)));
  const ns = 'http://www.w3.org/2000/svg';
  const el = (tag, attrs) => { const e = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); return e; };
  const svg = el('svg', { class: 'chart', 'data-metric': metric, 'data-dispatches': dispatches.length, viewBox: '0 0 600 220', role: 'img', 'aria-label': title });
  const w = Math.min(48, keys.length ? 560 / keys.length : 560);
  keys.forEach((k, i) => {
    let y = 200;
    for (const [j, id] of agentIds.entries()) {
      const v = buckets.get(k)[id] ?? 0;
      if (!v) continue;
      const hgt = (v / max) * 180;
      const r = el('rect', { x: 30 + i * w, y: y - hgt, width: Math.max(2, w - 4), height: hgt, fill: COLORS[j % COLORS.length] });
      const t = document.createElementNS(ns, 'title'); t.textContent = `${names[id] ?? id}: ${format(v)}`; r.append(t);
      svg.append(r);
      y -= hgt;
    }
    const label = el('text', { x: 30 + i * w, y: 211, 'font-size': 9 });
    label.textContent = `${new Date(k).getHours()}h`;
    svg.append(label);
  });
  const axis = el('text', { x: 30, y: 12, 'font-size': 11 });
  axis.textContent = keys.length ? `${new Date(keys[0]).toLocaleString()} — max ${format(max)} per hour`
    : metric === 'cost' ? 'no cost reported in the last 24 hours' : 'no finished dispatches in the last 24 hours';
  svg.append(axis);
  return h('div', { class: 'panel' }, h('h2', {}, title), svg);
}

async function usageView() {
  const body = h('div', { id: 'usage' });
  const updated = h('span', { class: 'small muted', id: 'usage-updated' });
  main.append(h('div', { class: 'row' }, h('h1', { class: 'grow' }, 'Usage'), updated), body);
  const render = async () => {
    const since = Date.now() - 24 * 3600 * 1000;
    const [agents, sessions, recent, running, queued] = await Promise.all([
      allPages('agent.list', {}),
      allPages('session.list', {}),
      allPages('dispatch.list', { cursor: cursorAt(since) }),
      allPages('dispatch.list', { status: 'running' }),
      allPages('dispatch.list', { status: 'queued' }),
    ]);
    const names = Object.fromEntries(agents.map((a) => [a.agentId, a.displayName]));
    const agentIds = agents.map((a) => a.agentId);
    const finished = recent.filter((d) => d.endedAt && Date.parse(d.endedAt) >= since);
    const legend = h('div', { class: 'row small' }, agentIds.map((id, j) => h('span', {}, h('span', { style: `color:${COLORS[j % COLORS.length]}` }, '■ '), names[id])));
    const chart = (metric, title, value, format) => hourlyChart({ metric, title, dispatches: finished, agentIds, names, value, format });
    const topSessions = [...sessions].sort((a, b) => (b.usage.costUsd - a.usage.costUsd) || (b.usage.totalTokens - a.usage.totalTokens)).slice(0, 100);
    const queue = [...running, ...queued];
    body.replaceChildren(
      h('div', { class: 'split' },
        chart('tokens', 'Tokens per hour', (d) => d.usage.totalTokens, (v) => `${Math.round(v)} tokens`),
        chart('cost', 'Cost per hour', (d) => d.usage.costUsd, usd)),
      legend,
      h('div', { class: 'split' },
        h('div', { class: 'panel' }, h('h2', {}, 'Per agent'), h('table', { id: 'usage-agents' },
          h('thead', {}, h('tr', {}, h('th', {}, 'Agent'), h('th', {}, 'Tokens'), h('th', {}, 'Cost'), h('th', { class: 'opt' }, 'Dispatches'))),
          h('tbody', {}, agents.map((a) => h('tr', { 'data-agent': a.agentId }, h('td', {}, a.displayName), h('td', {}, `${a.usage.totalTokens}`), h('td', { class: 'cost' }, usd(a.usage.costUsd)), h('td', { class: 'opt' }, `${a.usage.dispatches}`)))))),
        h('div', { class: 'panel' }, h('h2', {}, sessions.length > topSessions.length ? `Per session (top ${topSessions.length} of ${sessions.length})` : 'Per session'), h('table', { id: 'usage-sessions' },
          h('thead', {}, h('tr', {}, h('th', {}, 'Session'), h('th', {}, 'Tokens'), h('th', {}, 'Cost'), h('th', { class: 'opt' }, 'Dispatches'))),
          h('tbody', {}, topSessions.map((s) => h('tr', { 'data-session': s.sessionId },
            h('td', {}, h('a', { href: `#/session/${s.sessionId}` }, `${names[s.agentId] ?? ''} · ${s.title || s.sessionId.slice(-8)}`)),
            h('td', {}, `${s.usage.totalTokens}`), h('td', { class: 'cost' }, usd(s.usage.costUsd)), h('td', { class: 'opt' }, `${s.usage.dispatches}`))))))),
      h('div', { class: 'panel' }, h('h2', {}, 'Compute queue'), queue.length ? h('table', { id: 'queue' }, h('tbody', {}, queue.map((d) => h('tr', {},
        h('td', {}, h('a', { href: `#/session/${d.sessionId}` }, names[d.agentId] ?? d.agentId), ' ', h('span', { class: 'small muted' }, d.dispatchId)),
        h('td', {}, pill(d.status)),
        h('td', {}, d.waiting ? `${d.waiting.provider} #${d.waiting.position} · ${d.waiting.waitingMs} ms` : `priority ${d.priority}`))))) : h('p', { class: 'muted' }, 'Nothing queued.')));
    updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    body.dataset.renders = String(Number(body.dataset.renders ?? 0) + 1);
  };
  await render();
  // Live: a model call finished, a dispatch ended or waits at the gate. Renders are
  // coalesced, at most one a second.
  let timer = null;
  const soon = () => {
    if (timer) return;
    timer = setTimeout(() => { timer = null; render().catch(() => {}); }, 1000);
  };
  cleanup.push(on('compute.', soon));
  cleanup.push(on('session.dispatch.after', soon));
  cleanup.push(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------------------

connectEvents();
refreshAsks().catch(() => {});
on('skill.aos-guard.', () => refreshAsks().catch(() => {}));
// Ready once the first view has rendered (tests and scripts wait for it).
route().finally(() => { window.aosReady = true; });
