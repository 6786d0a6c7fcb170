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
  source.addEventListener('message', deliver);
  wrapNamed(source, deliver);
}

// EventSource has no catch-all for named events; the kernel's names are known from
// the hook catalogue plus `skill.<name>.*`, so register each family we show.
const NAMES = [
  'aos.started', 'aos.stopping', 'system.updated', 'skill.index.refresh.after', 'skill.load.after', 'skill.unload.after',
  'skill.start.after', 'skill.stop.after', 'agent.started', 'agent.updated', 'agent.archived', 'session.started',
  'session.updated', 'session.archived', 'session.dispatch.after', 'session.bootstrap.after', 'session.reinject.after',
  'session.compaction.after', 'session.error', 'session.interrupted', 'compute.waiting', 'compute.after',
  'service.error', 'service.registered', 'service.restarting', 'service.failed', 'hook.waiting', 'token.issued',
  'token.revoked', 'skill.aos-guard.ask', 'skill.aos-guard.decided', 'events.lagged',
];
function wrapNamed(src, deliver) { for (const n of NAMES) src.addEventListener(n, deliver); }

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
  // Defaults: skills, model, priority.
  const skills = h('input', { value: (agent.defaultSkills ?? []).map((r) => r.name).join(', '), 'aria-label': 'Default skills' });
  const model = h('input', { value: agent.model ?? '', placeholder: 'provider/model', 'aria-label': 'Model' });
  const priority = h('input', { type: 'number', value: agent.priority ?? 0, style: 'width:90px', 'aria-label': 'Priority' });
  const budgets = h('input', { value: agent.budgets ? JSON.stringify(agent.budgets) : '', placeholder: '{"tokensPerDay": 200000}', 'aria-label': 'Budgets (JSON)' });
  const saved = h('span', { class: 'small muted' });
  const defaults = h('form', { class: 'row', onsubmit: async (e) => {
    e.preventDefault();
    try {
      await call('agent.update', {
        agentId,
        defaultSkills: skills.value.split(',').map((n) => n.trim()).filter(Boolean).map((name) => ({ name, load: 'enable' })),
        model: model.value.trim() || null,
        priority: Number(priority.value) || 0,
        budgets: budgets.value.trim() ? JSON.parse(budgets.value) : null,
      });
      saved.textContent = 'saved';
    } catch (err) { saved.replaceChildren(errorBox(err)); }
  } }, h('label', { class: 'small' }, 'skills ', skills), h('label', { class: 'small' }, 'model ', model), h('label', { class: 'small' }, 'priority ', priority), h('label', { class: 'small' }, 'budgets ', budgets), h('button', { type: 'submit' }, 'Save defaults'), saved);
  const archive = h('button', { class: 'danger', onclick: async () => {
    if (!confirm(`Archive ${agent.displayName}? Its sessions become read-only.`)) return;
    await call('agent.archive', { agentId });
    location.hash = '#/agents';
  } }, 'Archive agent');
  main.append(h('h1', {}, agent.displayName, ' ', pill(agent.status)),
    h('div', { class: 'panel' }, newSession), h('div', { class: 'panel' }, h('h2', {}, 'Defaults'), defaults),
    h('div', { class: 'panel' }, h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Session'), h('th', {}, 'State'), h('th', { class: 'opt' }, 'Updated'), h('th', { class: 'opt' }, ''))), sessions)),
    agent.status === 'active' ? archive : '');
  await render();
  cleanup.push(on('session.', (e) => { if (e.agentId === agentId) render().catch(() => {}); }));
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
    const more = h('button', { class: 'small', onclick: async () => {
      const c = await call('content.read', { contentId, limit: 2000 });
      shown.querySelector('pre').textContent = c.content;
      more.remove();
    } }, `show all (${output.sizeChars ?? '?'} characters)`);
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
  const input = h('textarea', { id: 'message', rows: 2, placeholder: 'Message (Enter sends · Shift+Enter new line · Esc interrupts)', 'aria-label': 'Message' });
  const interrupt = h('button', { id: 'interrupt', class: 'danger', disabled: session.phase !== 'dispatched', onclick: () => stop() }, 'Interrupt');
  const send = h('button', { id: 'send', class: 'primary', onclick: () => submit() }, 'Send');
  const note = h('div', { class: 'small muted', id: 'dispatch-status' });
  const streams = new Map();

  async function stop() {
    try { await call('session.interrupt', { sessionId, reason: 'interrupted from the web UI' }); }
    catch (e) { note.replaceChildren(errorBox(e)); }
  }

  async function submit() {
    const content = input.value.trim();
    if (!content) return;
    input.value = '';
    try {
      const started = await call('session.dispatch', { sessionId, message: { role: 'user', content }, ifBusy: 'queue' });
      chat.append(h('div', { class: 'msg user' }, h('div', { class: 'who' }, 'you'), h('div', { class: 'text' }, content)));
      note.textContent = started.status === 'queued' ? `queued (position ${started.position ?? '?'})` : 'running';
      follow(started.dispatchId);
    } catch (e) { note.replaceChildren(errorBox(e)); input.value = content; }
  }

  function follow(dispatchId) {
    const live = h('div', { class: 'msg assistant streaming', 'data-dispatch': dispatchId }, h('div', { class: 'who' }, `${agent.displayName} · working`));
    let text = null;
    chat.append(live);
    const stream = new EventSource(`/api/dispatches/${dispatchId}/stream`);
    streams.set(dispatchId, stream);
    const data = (e) => JSON.parse(e.data);
    stream.addEventListener('delta', (e) => {
      if (!text) { text = h('div', { class: 'text' }); live.append(text); }
      text.textContent += data(e).text;
      live.dataset.deltas = String(Number(live.dataset.deltas ?? 0) + 1);
      live.scrollIntoView({ block: 'end' });
    });
    stream.addEventListener('tool_call', (e) => {
      const c = data(e);
      text = null;
      live.append(toolView(c.toolCallId, c.command));
    });
    stream.addEventListener('tool_result', (e) => {
      const r = data(e);
      const box = live.querySelector(`[data-tool="${CSS.escape(r.toolCallId)}"]`) ?? live.appendChild(toolView(r.toolCallId, ''));
      fillResult(box, { state: r.state, errorText: r.errorText, output: { visibleResult: r.preview, contentId: r.contentId } });
    });
    stream.addEventListener('message', (e) => {
      const m = data(e);
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
      streams.delete(dispatchId);
      live.classList.remove('streaming');
      live.querySelector('.who').textContent = `${agent.displayName} · ${d.status} · ${d.turns} turns · ${d.usage.totalTokens} tokens`;
      live.dataset.status = d.status;
      note.textContent = d.status;
    });
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
  cleanup.push(on('session.', (e) => {
    if (e.sessionId !== sessionId) return;
    if (e.name === 'session.updated' || e.name === 'session.interrupted') {
      call('session.get', { sessionId }).then((s) => {
        phase.replaceChildren(pill(s.phase));
        interrupt.disabled = s.phase !== 'dispatched';
      }).catch(() => {});
    }
  }));
  cleanup.push(() => { for (const s of streams.values()) s.close(); });
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
  const filter = h('input', { placeholder: 'Filter by event name (e.g. session.)', 'aria-label': 'Filter events' });
  const line = (e) => h('div', {}, `${e.ts ?? ''} ${e.name} ${e.sessionId ?? e.agentId ?? ''} ${JSON.stringify(e.payload ?? {}).slice(0, 300)}`);
  const renderLog = () => log.replaceChildren(...seenEvents.filter((e) => e.name.includes(filter.value.trim())).slice(-300).reverse().map(line));
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
  main.append(h('h1', {}, 'Activity'), h('h2', {}, 'Waiting for approval'), asks, h('h2', {}, 'Events'), h('div', { class: 'panel' }, filter, log));
  renderLog();
  await renderAsks();
  cleanup.push(on('', () => renderLog()));
  cleanup.push(on('skill.aos-guard.', () => renderAsks().catch(() => {})));
}

// ---------------------------------------------------------------------------------------
// Usage
// ---------------------------------------------------------------------------------------

async function usageView() {
  const [agents, dispatches] = await Promise.all([call('agent.list', { limit: 1000 }), call('dispatch.list', { limit: 1000 })]);
  const names = Object.fromEntries(agents.items.map((a) => [a.agentId, a.displayName]));
  const finished = dispatches.items.filter((d) => d.endedAt);
  // Tokens per hour bucket, per agent: a stacked bar chart in SVG.
  const buckets = new Map();
  for (const d of finished) {
    const hour = new Date(d.endedAt); hour.setMinutes(0, 0, 0);
    const key = hour.getTime();
    const row = buckets.get(key) ?? {};
    row[d.agentId] = (row[d.agentId] ?? 0) + d.usage.totalTokens;
    buckets.set(key, row);
  }
  const keys = [...buckets.keys()].sort((a, b) => a - b).slice(-24);
  const max = Math.max(1, ...keys.map((k) => Object.values(buckets.get(k)).reduce((a, b) => a + b, 0)));
  const colors = ['#2f5bea', '#16794c', '#a15c00', '#b42318', '#6941c6', '#0e7490'];
  const agentIds = agents.items.map((a) => a.agentId);
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('class', 'chart'); svg.setAttribute('viewBox', '0 0 600 220'); svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', 'Tokens per hour and agent');
  const w = Math.min(48, keys.length ? 560 / keys.length : 560);
  keys.forEach((k, i) => {
    let y = 200;
    for (const [j, id] of agentIds.entries()) {
      const v = buckets.get(k)[id] ?? 0;
      if (!v) continue;
      const hgt = (v / max) * 180;
      const r = document.createElementNS(ns, 'rect');
      r.setAttribute('x', 30 + i * w); r.setAttribute('y', y - hgt); r.setAttribute('width', Math.max(2, w - 4)); r.setAttribute('height', hgt);
      r.setAttribute('fill', colors[j % colors.length]);
      const t = document.createElementNS(ns, 'title'); t.textContent = `${names[id]}: ${v} tokens`; r.append(t);
      svg.append(r);
      y -= hgt;
    }
    const label = document.createElementNS(ns, 'text');
    label.setAttribute('x', 30 + i * w); label.setAttribute('y', 200 + 11); label.setAttribute('font-size', 9);
    label.textContent = `${new Date(k).getHours()}h`;
    svg.append(label);
  });
  const axis = document.createElementNS(ns, 'text'); axis.setAttribute('x', 30); axis.setAttribute('y', 12); axis.setAttribute('font-size', 11);
  axis.textContent = keys.length ? `${new Date(keys[0]).toLocaleString()} — max ${max} tokens/hour` : 'no finished dispatches yet';
  svg.append(axis);
  const perSession = new Map();
  for (const d of finished) {
    const s = perSession.get(d.sessionId) ?? { agentId: d.agentId, tokens: 0, cost: 0, dispatches: 0 };
    s.tokens += d.usage.totalTokens; s.cost += d.usage.costUsd ?? 0; s.dispatches += 1;
    perSession.set(d.sessionId, s);
  }
  const queue = dispatches.items.filter((d) => d.status === 'queued' || d.status === 'running');
  main.append(h('h1', {}, 'Usage'),
    h('div', { class: 'panel' }, h('h2', {}, 'Tokens per hour'), svg, h('div', { class: 'row small' }, agentIds.map((id, j) => h('span', {}, h('span', { style: `color:${colors[j % colors.length]}` }, '■ '), names[id])))),
    h('div', { class: 'split' },
      h('div', { class: 'panel' }, h('h2', {}, 'Per agent'), h('table', {}, h('tbody', {}, agents.items.map((a) => h('tr', {}, h('td', {}, a.displayName), h('td', {}, `${a.usage.totalTokens} tokens`), h('td', { class: 'opt' }, `$${(a.usage.costUsd ?? 0).toFixed(4)}`), h('td', { class: 'opt' }, `${a.usage.dispatches} dispatches`)))))),
      h('div', { class: 'panel' }, h('h2', {}, 'Per session'), h('table', {}, h('tbody', {}, [...perSession].map(([id, s]) => h('tr', {}, h('td', {}, h('a', { href: `#/session/${id}` }, `${names[s.agentId] ?? ''} ${id.slice(-8)}`)), h('td', {}, `${s.tokens} tokens`), h('td', { class: 'opt' }, `${s.dispatches} dispatches`))))))),
    h('div', { class: 'panel' }, h('h2', {}, 'Compute queue'), queue.length ? h('table', {}, h('tbody', {}, queue.map((d) => h('tr', {}, h('td', {}, d.dispatchId), h('td', {}, pill(d.status)), h('td', {}, d.waiting ? `${d.waiting.provider} #${d.waiting.position} · ${d.waiting.waitingMs} ms` : `priority ${d.priority}`))))) : h('p', { class: 'muted' }, 'Nothing queued.')));
  cleanup.push(on('compute.', () => {}));
}

// ---------------------------------------------------------------------------------------

connectEvents();
refreshAsks().catch(() => {});
on('skill.aos-guard.', () => refreshAsks().catch(() => {}));
// Ready once the first view has rendered (tests and scripts wait for it).
route().finally(() => { window.aosReady = true; });
