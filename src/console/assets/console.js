// zhijian console: the live feed of violations for QA supervisors.
//
// Transcript text is untrusted: it only ever reaches the page through
// textContent / text nodes, never as HTML. The server's CSP allows no inline
// script either.
'use strict';

(() => {
  const MAX_ROWS = 1000;      // rows in the table
  const MAX_KEPT = 20000;     // violations kept for filters, counters, ranking

  const $ = (id) => document.getElementById(id);
  const state = {
    lastSeq: null,            // stream sequence of the last event received
    duplicates: 0,            // events at or below lastSeq (the server never resends)
    violations: [],           // {seq, raised, v}, oldest first
    summaries: new Map(),     // "tenant/conversation" -> summary
    tenants: new Set(),
    // Category id -> display name (null until an event names it). The
    // lexicon defines the categories: the page knows those it has seen, in
    // violations (which carry category_name since contract v1.2) and in
    // summaries' counts.
    categories: new Map(),
    paused: false,
    waiting: 0,               // alerts received while paused
    token: sessionStorage.getItem('zhijian-token') || '',
    detail: null,             // {tenant, id} shown in the detail panel
  };

  // ---- small DOM helpers (text only) ----
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  // `text` with the code points [start, end) in <mark>; offsets are Unicode
  // scalar values, as in the event contract.
  function highlighted(text, ranges) {
    const cps = Array.from(text);
    const on = new Array(cps.length).fill(false);
    for (const [s, e] of ranges) {
      for (let i = Math.max(0, s); i < Math.min(e, cps.length); i++) on[i] = true;
    }
    const out = document.createDocumentFragment();
    let i = 0;
    while (i < cps.length) {
      let j = i;
      while (j < cps.length && on[j] === on[i]) j++;
      const piece = cps.slice(i, j).join('');
      out.append(on[i] ? el('mark', null, piece) : document.createTextNode(piece));
      i = j;
    }
    return out;
  }

  // Every hit span of a violation (contract v1.1), or its one span (v1).
  function spansOf(v) {
    if (Array.isArray(v.spans) && v.spans.length) return v.spans;
    return v.start !== null && v.end !== null ? [[v.start, v.end]] : [];
  }

  function timeOf(ms) {
    return new Date(ms).toLocaleTimeString('zh-CN', { hour12: false });
  }

  function authHeaders() {
    return state.token ? { Authorization: 'Bearer ' + state.token } : {};
  }

  // ---- categories ----
  // Learns a category (and its name, when given); true when that changed
  // what the page shows.
  function learnCategory(id, name) {
    if (typeof id !== 'string' || !id) return false;
    const had = state.categories.get(id);
    if (had === undefined || (name && had !== name)) {
      state.categories.set(id, name || had || null);
      return true;
    }
    return false;
  }

  // How people read a category: its display name, or its id (events
  // before contract v1.2, categories only seen in summaries).
  function categoryLabel(id) {
    return state.categories.get(id) || id;
  }

  function nameOf(v) {
    return v.category_name || categoryLabel(v.category);
  }

  function setStatus(s, text) {
    const e = $('status');
    e.dataset.state = s;
    e.textContent = text || s;
  }

  // ---- filters ----
  function filters() {
    return {
      tenant: $('f-tenant').value,
      category: $('f-category').value,
      severity: $('f-severity').value,
      agent: $('f-agent').value.trim(),
    };
  }

  function passes(v, f, ignoreCategory) {
    return (!f.tenant || v.tenant === f.tenant)
      && (ignoreCategory || !f.category || v.category === f.category)
      && (!f.severity || v.severity === f.severity)
      && (!f.agent || (v.agent_id || '') === f.agent);
  }

  // ---- rendering ----
  function row(item) {
    const v = item.v;
    const tr = el('tr', 'sev-' + v.severity);
    tr.dataset.id = v.id;
    tr.dataset.seq = String(item.seq);
    tr.dataset.category = v.category;
    tr.dataset.tenant = v.tenant;
    tr.dataset.agent = v.agent_id || '';
    const time = el('td', 'time', timeOf(item.raised));
    time.title = 'spoken ' + new Date(v.ts_ms).toLocaleString('zh-CN', { hour12: false });
    const conv = el('td');
    const link = el('button', 'conv', v.conversation_id);
    link.type = 'button';
    link.addEventListener('click', () => openDetail(v.tenant, v.conversation_id));
    conv.append(link);
    const text = el('td', 'text');
    // Spans are segment offsets; `text` may be an excerpt from text_start.
    const from = v.text_start || 0;
    const ranges = spansOf(v).map(([s, e]) => [s - from, e - from]);
    text.append(highlighted(v.text, ranges));
    if (v.count > 1) text.append(el('span', 'count', ` ×${v.count}`));
    // A verdict (a required phrase missing, a reply too late) matched no
    // words: its note says why.
    if (v.note) text.append(el('div', 'note', v.note));
    // Rules that matched the same words, folded into this violation.
    if (Array.isArray(v.also) && v.also.length) {
      const also = v.also.map((a) => `${a.rule_id} (${categoryLabel(a.category)})`).join(', ');
      text.append(el('div', 'also', 'also: ' + also));
    }
    const category = el('td', 'category', nameOf(v));
    category.title = v.category;
    tr.append(time, el('td', 'tenant', v.tenant), el('td', 'agent', v.agent_id || '–'), conv,
      category, el('td', 'sev', v.severity), el('td', 'rule', v.rule_id), text);
    return tr;
  }

  function renderFeed() {
    const f = filters();
    const body = $('feed');
    const rows = [];
    for (let i = state.violations.length - 1; i >= 0 && rows.length < MAX_ROWS; i--) {
      if (passes(state.violations[i].v, f, false)) rows.push(row(state.violations[i]));
    }
    body.replaceChildren(...rows);
    $('empty').hidden = rows.length > 0;
    state.waiting = 0;
    $('waiting').textContent = '';
  }

  // One counter per category the page knows, by id; a category with a
  // critical alert among those counted is marked.
  function renderCounters() {
    const f = filters();
    const counts = new Map();
    const critical = new Set();
    for (const { v } of state.violations) {
      if (!passes(v, f, true)) continue;
      counts.set(v.category, (counts.get(v.category) || 0) + 1);
      if (v.severity === 'critical') critical.add(v.category);
    }
    for (const counter of $('counters').children) {
      const c = counter.dataset.category;
      counter.querySelector('b').textContent = String(counts.get(c) || 0);
      counter.classList.toggle('critical', critical.has(c));
    }
  }

  // The category filter's options and the counters, from the categories
  // the page knows (the selected filter is kept).
  function renderCategories() {
    const ids = [...state.categories.keys()].sort();
    const select = $('f-category');
    const selected = select.value;
    const options = ids.map((id) => {
      const o = new Option(categoryLabel(id), id);
      o.title = id;
      return o;
    });
    select.replaceChildren(new Option('all', ''), ...options);
    select.value = ids.includes(selected) ? selected : '';
    $('counters').replaceChildren(...ids.map((id) => {
      const counter = el('span', 'counter', categoryLabel(id) + ' ');
      counter.dataset.category = id;
      counter.title = id;
      counter.append(el('b', null, '0'));
      return counter;
    }));
    renderCounters();
  }

  function renderRanking() {
    const f = filters();
    const since = Date.now() - Number($('window').value) * 60000;
    const byAgent = new Map();
    for (const { v, raised } of state.violations) {
      if (raised < since || !passes(v, f, false)) continue;
      const key = v.agent_id || '–';
      byAgent.set(key, (byAgent.get(key) || 0) + 1);
    }
    const ranked = [...byAgent.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    $('ranking').replaceChildren(...ranked.slice(0, 20).map(([agent, n]) => {
      const li = el('li', null, `${agent} — ${n}`);
      li.dataset.agent = agent;
      li.dataset.count = String(n);
      return li;
    }));
  }

  function renderTenants() {
    const select = $('f-tenant');
    const have = new Set([...select.options].map((o) => o.value));
    for (const t of [...state.tenants].sort()) {
      if (!have.has(t)) select.append(new Option(t, t));
    }
  }

  // Counters and ranking are recomputed at most once per frame, however
  // many alerts arrive.
  let talliesDue = false;
  function scheduleTallies() {
    if (talliesDue) return;
    talliesDue = true;
    requestAnimationFrame(() => {
      talliesDue = false;
      renderCounters();
      renderRanking();
    });
  }

  function renderAll() {
    renderFeed();
    renderCounters();
    renderRanking();
  }

  // ---- events ----
  function onEvent(seq, data) {
    // The server sends in stream order and never resends: anything at or
    // below the last sequence is a duplicate, counted so it can be seen.
    if (state.lastSeq !== null && seq <= state.lastSeq) {
      state.duplicates += 1;
      $('status').dataset.duplicates = String(state.duplicates);
      return;
    }
    state.lastSeq = seq;
    const ev = data.event;
    if (ev.type === 'summary') {
      let learnt = false;
      for (const [c, n] of Object.entries(ev.counts || {})) {
        if (n > 0) learnt = learnCategory(c, null) || learnt;
      }
      if (learnt) renderCategories();
      state.summaries.set(ev.tenant + '/' + ev.conversation_id, ev);
      if (state.summaries.size > MAX_KEPT) state.summaries.delete(state.summaries.keys().next().value);
      refreshDetail(ev.tenant, ev.conversation_id);
      return;
    }
    if (ev.type !== 'violation') return;
    const item = { seq, raised: data.raised_ms || Date.now(), v: ev };
    state.violations.push(item);
    if (state.violations.length > MAX_KEPT) state.violations.splice(0, state.violations.length - MAX_KEPT);
    if (!state.tenants.has(ev.tenant)) {
      state.tenants.add(ev.tenant);
      renderTenants();
    }
    if (learnCategory(ev.category, ev.category_name)) renderCategories();
    scheduleTallies();
    refreshDetail(ev.tenant, ev.conversation_id);
    if (!passes(ev, filters(), false)) return;
    if (state.paused) {
      state.waiting += 1;
      $('waiting').textContent = `${state.waiting} new while paused`;
      return;
    }
    const body = $('feed');
    body.prepend(row(item));
    while (body.rows.length > MAX_ROWS) body.lastElementChild.remove();
    $('empty').hidden = true;
  }

  // The output stream was recreated on the server: sequence numbers start
  // over, so does the page.
  function startOver() {
    state.lastSeq = null;
    state.violations = [];
    state.summaries.clear();
    $('notice').textContent = 'The server restarted its event history.';
    renderAll();
  }

  // Server-sent events read with fetch (so a bearer token can be sent),
  // resumed with Last-Event-ID after any disconnect. A connection silent
  // for longer than three keep-alives (15 s each) is dead (a laptop slept,
  // a NAT forgot it): dropped and reopened.
  const SILENCE_MS = 45000;
  let following = false;
  async function follow() {
    if (following) return;
    following = true;
    let delay = 500;
    for (;;) {
      setStatus(state.lastSeq === null ? 'connecting' : 'reconnecting');
      const abort = new AbortController();
      let watchdog = setTimeout(() => abort.abort(), SILENCE_MS);
      const alive = () => {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => abort.abort(), SILENCE_MS);
      };
      try {
        const headers = { Accept: 'text/event-stream', ...authHeaders() };
        if (state.lastSeq !== null) headers['Last-Event-ID'] = String(state.lastSeq);
        const res = await fetch('/api/events', { headers, cache: 'no-store', signal: abort.signal });
        if (res.status === 401) {
          clearTimeout(watchdog);
          setStatus('unauthorized', 'token needed');
          $('login').hidden = false;
          following = false;
          return;
        }
        if (!res.ok || !res.body) throw new Error('HTTP ' + res.status);
        setStatus('live');
        delay = 500;
        await readEvents(res.body, alive);
      } catch (e) {
        // Network error, dead connection or server gone: retry below.
      }
      clearTimeout(watchdog);
      setStatus('reconnecting');
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  }

  async function readEvents(body, alive) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      alive();
      buf += value.replace(/\r\n?/g, '\n');
      let cut;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let id = null;
        let name = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'id') id = val;
          else if (field === 'event') name = val;
          else if (field === 'data') data.push(val);
        }
        if (name === 'gap') {
          $('notice').textContent = 'Some older alerts are no longer kept by the server.';
        } else if (name === 'lagged') {
          $('notice').textContent = 'Fell behind; catching up.';
        } else if (name === 'reset') {
          startOver();
        } else if (name === 'message' && id !== null && data.length) {
          onEvent(Number(id), JSON.parse(data.join('\n')));
        }
      }
    }
  }

  // ---- conversation detail ----
  async function openDetail(tenant, id) {
    state.detail = { tenant, id };
    $('detail').hidden = false;
    $('detail-title').textContent = `${tenant} / ${id}`;
    await loadDetail();
  }

  // At most one reload of the open conversation per second, however many
  // of its events arrive.
  let detailDue = null;
  function refreshDetail(tenant, id) {
    if (!state.detail || state.detail.tenant !== tenant || state.detail.id !== id || detailDue) return;
    detailDue = setTimeout(() => {
      detailDue = null;
      if (state.detail) loadDetail();
    }, 1000);
  }

  let detailRequest = 0;
  async function loadDetail() {
    const { tenant, id } = state.detail;
    const mine = ++detailRequest;
    let view;
    try {
      const res = await fetch(`/api/conversations/${encodeURIComponent(tenant)}/${encodeURIComponent(id)}`,
        { headers: authHeaders(), cache: 'no-store' });
      if (!res.ok) throw new Error('HTTP ' + res.status);
      view = await res.json();
    } catch (e) {
      $('detail-summary').textContent = 'Cannot load the conversation: ' + e.message;
      return;
    }
    if (mine !== detailRequest || !state.detail || state.detail.tenant !== tenant || state.detail.id !== id) return;
    const ranges = new Map();
    let learnt = false;
    for (const v of view.violations) learnt = learnCategory(v.category, v.category_name) || learnt;
    if (learnt) renderCategories();
    for (const v of view.violations) {
      if (!ranges.has(v.seq)) ranges.set(v.seq, []);
      ranges.get(v.seq).push(...spansOf(v));
    }
    $('detail-segments').replaceChildren(...view.segments.map((s) => {
      const li = el('li', s.speaker);
      li.dataset.seq = String(s.seq);
      li.append(el('span', 'who', `#${s.seq} ${s.speaker}`), highlighted(s.text, ranges.get(s.seq) || []));
      return li;
    }));
    const summary = view.summary || state.summaries.get(tenant + '/' + id);
    const box = $('detail-summary');
    if (summary) {
      // Every category the conversation broke, by name, with its count.
      const counts = Object.entries(summary.counts || {}).filter(([, n]) => n > 0)
        .map(([c, n]) => {
          const item = el('span', 'cat-count', `${categoryLabel(c)} ${n}`);
          item.dataset.category = c;
          item.dataset.count = String(n);
          item.title = c;
          return item;
        });
      const parts = counts.length ? counts.flatMap((e) => [document.createTextNode(' · '), e])
        : [document.createTextNode(' · no violations')];
      box.replaceChildren(
        el('span', 'score', summary.score),
        document.createTextNode(` closed (${summary.reason}) · greeted ${summary.greeted ?? '–'} · closing ${summary.closed ?? '–'}`),
        ...parts,
      );
      box.dataset.score = String(summary.score);
    } else {
      box.replaceChildren(document.createTextNode(`in progress · ${view.violations.length} alerts so far`));
      delete box.dataset.score;
    }
  }

  // ---- controls ----
  function init() {
    for (const id of ['f-tenant', 'f-category', 'f-severity', 'window']) {
      $(id).addEventListener('change', renderAll);
    }
    $('f-agent').addEventListener('input', renderAll);
    $('pause').addEventListener('click', () => {
      state.paused = !state.paused;
      $('pause').textContent = state.paused ? 'Resume' : 'Pause';
      if (!state.paused) renderFeed();
    });
    $('detail-close').addEventListener('click', () => {
      state.detail = null;
      $('detail').hidden = true;
    });
    $('token-ok').addEventListener('click', () => {
      state.token = $('token').value;
      sessionStorage.setItem('zhijian-token', state.token);
      $('login').hidden = true;
      follow();
    });
    setInterval(renderRanking, 30000);
    follow();
  }

  init();
})();
