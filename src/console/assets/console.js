// zhijian console: the live feed of violations for QA supervisors.
//
// Labels are zh-CN unless the supervisor switches to English (kept in
// localStorage). The feed has one row per utterance (tenant, conversation,
// segment): every rule it broke, every matched span, its worst severity.
// The filters live in the query string, so a view can be shared.
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
    // One row per utterance: "tenant/conversation/seq" -> {key, first,
    // items}, the violations of that segment in stream order; `first` is
    // the stream sequence of the first (the row's place in the feed).
    utterances: new Map(),
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
    notice: null,             // key of the notice shown
    // The filters, also in the URL's query string (?tenant=&category=
    // &severity=&agent=) so a view can be shared; read once on load.
    filter: { tenant: '', category: '', severity: '', agent: '' },
  };

  // ---- small DOM helpers (text only) ----
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  // ---- labels: zh-CN by default, English on request (remembered) ----
  const LANGS = {
    'zh-CN': {
      title: '质检 · 实时告警', subtitle: 'zhijian · 实时告警', token: '访问令牌', connect: '连接',
      tenant: '租户', category: '类别', severity: '严重程度', agent: '坐席', 'agent-id': '坐席工号',
      all: '全部', 'th.time': '时间', 'th.conversation': '会话', 'th.rule': '规则', 'th.utterance': '话语',
      empty: '暂无告警。', 'ranking.before': '坐席告警排行，最近', 'ranking.after': '分钟', close: '关闭',
      pause: '暂停', resume: '继续', switch: 'English',
      'sev.critical': '严重', 'sev.high': '高', 'sev.medium': '中', 'sev.low': '低',
      'st.connecting': '连接中…', 'st.reconnecting': '重新连接中…', 'st.live': '实时', 'st.unauthorized': '需要令牌',
      waiting: (n) => `${n} 条新告警（已暂停）`,
      'notice.gap': '服务器已不再保留部分较早的告警。', 'notice.lagged': '处理落后，正在追赶。',
      'notice.reset': '服务器重置了事件历史。',
      spoken: '发言时间 ', also: '同时命中：', 'detail.error': '无法加载会话：',
      closed: (reason, greeted, closing) => ` 已结束（${reason}）· 开头语 ${greeted} · 结束语 ${closing}`,
      'no-violations': ' · 无违规', progress: (n) => `进行中 · 已有 ${n} 条告警`,
      'who.agent': '坐席', 'who.customer': '客户',
    },
    en: {
      title: 'zhijian 质检 · live alerts', subtitle: 'zhijian · live alerts', token: 'Access token', connect: 'Connect',
      tenant: 'Tenant', category: 'Category', severity: 'Severity', agent: 'Agent', 'agent-id': 'agent id',
      all: 'all', 'th.time': 'Time', 'th.conversation': 'Conversation', 'th.rule': 'Rule', 'th.utterance': 'Utterance',
      empty: 'No alerts yet.', 'ranking.before': 'Agents by alerts, last', 'ranking.after': 'min', close: 'Close',
      pause: 'Pause', resume: 'Resume', switch: '中文',
      'sev.critical': 'critical', 'sev.high': 'high', 'sev.medium': 'medium', 'sev.low': 'low',
      'st.connecting': 'connecting…', 'st.reconnecting': 'reconnecting…', 'st.live': 'live', 'st.unauthorized': 'token needed',
      waiting: (n) => `${n} new while paused`,
      'notice.gap': 'Some older alerts are no longer kept by the server.', 'notice.lagged': 'Fell behind; catching up.',
      'notice.reset': 'The server restarted its event history.',
      spoken: 'spoken ', also: 'also: ', 'detail.error': 'Cannot load the conversation: ',
      closed: (reason, greeted, closing) => ` closed (${reason}) · greeted ${greeted} · closing ${closing}`,
      'no-violations': ' · no violations', progress: (n) => `in progress · ${n} alerts so far`,
      'who.agent': 'agent', 'who.customer': 'customer',
    },
  };
  const LANG_KEY = 'zhijian-lang';
  let lang = LANGS[localStorage.getItem(LANG_KEY)] ? localStorage.getItem(LANG_KEY) : 'zh-CN';

  // The label `key` in the chosen language (a function of `args` for
  // labels with numbers in them); the key itself when unknown.
  function t(key, ...args) {
    const v = LANGS[lang][key] ?? LANGS['zh-CN'][key];
    if (typeof v === 'function') return v(...args);
    return v === undefined ? key : v;
  }

  const SEVERITIES = ['critical', 'high', 'medium', 'low']; // most severe first
  function severityRank(s) {
    const i = SEVERITIES.indexOf(s);
    return i < 0 ? SEVERITIES.length : i;
  }

  // The static labels of the page (data-i18n, data-i18n-placeholder).
  function applyLabels() {
    document.documentElement.lang = lang;
    document.title = t('title');
    for (const e of document.querySelectorAll('[data-i18n]')) e.textContent = t(e.dataset.i18n);
    for (const e of document.querySelectorAll('[data-i18n-placeholder]')) e.placeholder = t(e.dataset.i18nPlaceholder);
    const button = $('lang');
    button.textContent = t('switch');
    button.lang = lang === 'en' ? 'zh-CN' : 'en';
    button.dataset.lang = lang;
    $('pause').textContent = t(state.paused ? 'resume' : 'pause');
    setStatus($('status').dataset.state);
    showWaiting();
    showNotice(state.notice);
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

  function setStatus(s) {
    const e = $('status');
    e.dataset.state = s;
    e.textContent = t('st.' + s);
  }

  function showWaiting() {
    const e = $('waiting');
    e.dataset.count = String(state.waiting);
    e.textContent = state.waiting ? t('waiting', state.waiting) : '';
  }

  function showNotice(key) {
    state.notice = key;
    const e = $('notice');
    e.dataset.notice = key || '';
    e.textContent = key ? t('notice.' + key) : '';
  }

  // ---- filters ----
  const FILTERS = ['tenant', 'category', 'severity', 'agent'];

  function filters() {
    return state.filter;
  }

  // The filters from the URL (loading a shared view).
  function filtersFromUrl() {
    const q = new URLSearchParams(location.search);
    for (const k of FILTERS) state.filter[k] = (q.get(k) || '').trim();
    if (!SEVERITIES.includes(state.filter.severity)) state.filter.severity = '';
    $('f-severity').value = state.filter.severity;
    $('f-agent').value = state.filter.agent;
    renderTenants();
  }

  // The filters from the controls, into the URL (history.replaceState: a
  // filter change is no new page to go back to).
  function filtersChanged() {
    state.filter = {
      tenant: $('f-tenant').value,
      category: $('f-category').value,
      severity: $('f-severity').value,
      agent: $('f-agent').value.trim(),
    };
    const url = new URL(location.href);
    for (const k of FILTERS) {
      if (state.filter[k]) url.searchParams.set(k, state.filter[k]);
      else url.searchParams.delete(k);
    }
    history.replaceState(history.state, '', url.pathname + url.search + url.hash);
    renderAll();
  }

  function passes(v, f, ignoreCategory) {
    return (!f.tenant || v.tenant === f.tenant)
      && (ignoreCategory || !f.category || v.category === f.category)
      && (!f.severity || v.severity === f.severity)
      && (!f.agent || (v.agent_id || '') === f.agent);
  }

  // An utterance is shown when any of its violations passes the filters.
  function utterancePasses(u, f) {
    return u.items.some((item) => passes(item.v, f, false));
  }

  function utteranceKey(v) {
    return JSON.stringify([v.tenant, v.conversation_id, v.seq]);
  }

  // ---- rendering ----
  // The text a row shows: the violations' `text` is the segment or an
  // excerpt of it (from text_start); the one covering most spans is used.
  function rowText(vs) {
    let best = vs[0];
    let bestCovered = -1;
    for (const v of vs) {
      const from = v.text_start || 0;
      const to = from + Array.from(v.text).length;
      const covered = vs.flatMap(spansOf).filter(([s, e]) => s >= from && e <= to).length;
      if (covered > bestCovered) [best, bestCovered] = [v, covered];
    }
    return best;
  }

  // One row per utterance: every rule it broke (category by display name,
  // rule id as the detail), every span of all of them highlighted, the
  // severity of the most severe.
  function row(u) {
    const vs = u.items.map((item) => item.v);
    const last = u.items[u.items.length - 1];
    const head = vs[0];
    const severity = vs.map((v) => v.severity).sort((a, b) => severityRank(a) - severityRank(b))[0];
    const categories = [...new Set(vs.map((v) => v.category))];
    // A customer's words carry no agent, a verdict on them (no apology) does.
    const agent = vs.map((v) => v.agent_id).find(Boolean) || '';
    const tr = el('tr', 'sev-' + severity);
    tr.dataset.key = u.key;
    tr.dataset.ids = vs.map((v) => v.id).join(' ');
    tr.dataset.count = String(vs.length);
    tr.dataset.seq = String(head.seq);
    tr.dataset.severity = severity;
    tr.dataset.categories = categories.join(' ');
    tr.dataset.tenant = head.tenant;
    tr.dataset.conversation = head.conversation_id;
    tr.dataset.agent = agent;
    const time = el('td', 'time', timeOf(last.raised));
    time.title = t('spoken') + new Date(head.ts_ms).toLocaleString('zh-CN', { hour12: false });
    const conv = el('td');
    const link = el('button', 'conv', head.conversation_id);
    link.type = 'button';
    link.addEventListener('click', () => openDetail(head.tenant, head.conversation_id));
    conv.append(link);
    const shown = rowText(vs);
    const text = el('td', 'text');
    // Spans are segment offsets; `text` may be an excerpt from text_start.
    const from = shown.text_start || 0;
    const ranges = vs.flatMap(spansOf).map(([s, e]) => [s - from, e - from]);
    text.append(highlighted(shown.text, ranges));
    const repeated = vs.filter((v) => v.count > 1).map((v) => `×${v.count}`);
    if (repeated.length) text.append(el('span', 'count', ' ' + repeated.join(' ')));
    // A verdict (a required phrase missing, a reply too late) matched no
    // words: its note says why.
    for (const v of vs) if (v.note) text.append(el('div', 'note', v.note));
    // Rules that matched the same words, folded into a violation.
    const also = vs.flatMap((v) => (Array.isArray(v.also) ? v.also : []))
      .map((a) => `${categoryLabel(a.category)} (${a.rule_id})`);
    if (also.length) text.append(el('div', 'also', t('also') + also.join(', ')));
    const category = el('td', 'category');
    category.append(...categories.map((c) => {
      const name = nameOf(vs.find((v) => v.category === c));
      const span = el('span', 'cat', name);
      span.dataset.category = c;
      span.title = c;
      return span;
    }));
    const sev = el('td', 'sev', t('sev.' + severity));
    sev.title = severity;
    const rules = el('td', 'rule');
    rules.append(...vs.map((v) => {
      const span = el('span', 'rule-id', v.rule_id);
      span.dataset.id = v.id;
      span.title = `${nameOf(v)} · ${t('sev.' + v.severity)}`;
      return span;
    }));
    tr.append(time, el('td', 'tenant', head.tenant), el('td', 'agent', agent || '–'), conv,
      category, sev, rules, text);
    return tr;
  }

  function renderFeed() {
    const f = filters();
    const body = $('feed');
    const rows = [];
    // Newest utterance first (the map keeps them in order of their first
    // violation).
    const all = [...state.utterances.values()];
    for (let i = all.length - 1; i >= 0 && rows.length < MAX_ROWS; i--) {
      if (utterancePasses(all[i], f)) rows.push(row(all[i]));
    }
    body.replaceChildren(...rows);
    $('empty').hidden = rows.length > 0;
    state.waiting = 0;
    showWaiting();
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
    // A category asked for (a shared URL) before any alert named it.
    const wanted = state.filter.category;
    if (wanted && !ids.includes(wanted)) options.push(new Option(wanted, wanted));
    const all = new Option(t('all'), '');
    all.dataset.i18n = 'all';
    select.replaceChildren(all, ...options);
    select.value = wanted;
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
    const wanted = state.filter.tenant;
    for (const tenant of [...state.tenants, ...(wanted ? [wanted] : [])].sort()) {
      if (!have.has(tenant)) {
        select.append(new Option(tenant, tenant));
        have.add(tenant);
      }
    }
    select.value = wanted;
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
    const key = utteranceKey(ev);
    let u = state.utterances.get(key);
    if (!u) {
      u = { key, first: seq, items: [] };
      state.utterances.set(key, u);
    }
    u.items.push(item);
    if (state.violations.length > MAX_KEPT) {
      // The oldest violations go, from their utterances too (each the
      // oldest of its own).
      for (const old of state.violations.splice(0, state.violations.length - MAX_KEPT)) {
        const ou = state.utterances.get(utteranceKey(old.v));
        ou.items.shift();
        if (!ou.items.length) state.utterances.delete(ou.key);
      }
    }
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
      showWaiting();
      return;
    }
    if (!state.utterances.has(key)) return; // trimmed at once (MAX_KEPT)
    // A new violation of an utterance already shown updates its row.
    const body = $('feed');
    const shown = [...body.rows].find((tr) => tr.dataset.key === key);
    if (shown) {
      shown.replaceWith(row(u));
      return;
    }
    body.prepend(row(u));
    while (body.rows.length > MAX_ROWS) body.lastElementChild.remove();
    $('empty').hidden = true;
  }

  // The output stream was recreated on the server: sequence numbers start
  // over, so does the page.
  function startOver() {
    state.lastSeq = null;
    state.violations = [];
    state.utterances.clear();
    state.summaries.clear();
    showNotice('reset');
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
          setStatus('unauthorized');
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
          showNotice('gap');
        } else if (name === 'lagged') {
          showNotice('lagged');
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
      $('detail-summary').textContent = t('detail.error') + e.message;
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
      li.append(el('span', 'who', `#${s.seq} ${LANGS[lang]['who.' + s.speaker] || s.speaker}`), highlighted(s.text, ranges.get(s.seq) || []));
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
        : [document.createTextNode(t('no-violations'))];
      box.replaceChildren(
        el('span', 'score', summary.score),
        document.createTextNode(t('closed', summary.reason, summary.greeted ?? '–', summary.closed ?? '–')),
        ...parts,
      );
      box.dataset.score = String(summary.score);
    } else {
      box.replaceChildren(document.createTextNode(t('progress', view.violations.length)));
      delete box.dataset.score;
    }
  }

  // ---- controls ----
  function init() {
    filtersFromUrl();
    applyLabels();
    for (const id of ['f-tenant', 'f-category', 'f-severity']) {
      $(id).addEventListener('change', filtersChanged);
    }
    $('window').addEventListener('change', renderAll);
    $('f-agent').addEventListener('input', filtersChanged);
    $('lang').addEventListener('click', () => {
      lang = lang === 'en' ? 'zh-CN' : 'en';
      localStorage.setItem(LANG_KEY, lang);
      applyLabels();
      renderCategories();
      if (!state.paused) renderFeed();
      if (state.detail) loadDetail();
    });
    $('pause').addEventListener('click', () => {
      state.paused = !state.paused;
      $('pause').textContent = t(state.paused ? 'resume' : 'pause');
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
