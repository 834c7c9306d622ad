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
  // Rows in the table: a page of them, more on request. Laying out a
  // thousand rows took 200-400 ms in headless Chromium (on a busy 2-core
  // machine), 200 rows 60-100 ms; a page of 100 keeps a filter change well
  // under 100 ms with 5,000 alerts in the page.
  const PAGE_ROWS = 100;
  const MAX_ROWS = 2000;
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
    // The view (?view=board|agent; the feed by default) and the open
    // conversation (?conv=tenant/id), in the URL too.
    view: 'feed',
    rowLimit: PAGE_ROWS,      // rows shown (a page more on each "more")
    // Alert id -> its shared state (acknowledged, assigned, notes, false
    // alarm), as every supervisor sees it (SSE `alert` events).
    alerts: new Map(),
    me: localStorage.getItem('zhijian-me') || '',
    work: null,               // key of the utterance whose alerts are being worked
    attention: localStorage.getItem('zhijian-attention') === '1',
    beeps: 0,                 // critical alerts signalled (sound / notification)
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
      more: '显示更多', me: '我的名字', 'notify.off': '开启提醒', 'notify.on': '提醒已开启', 'notify.denied': '通知被拒绝（仅声音）',
      'view.feed': '告警流', 'view.board': '实时会话', 'view.agent': '坐席', export: '导出误报（CSV）',
      'th.desk': '处理', 'th.worst': '最需关注', 'th.channel': '渠道', 'th.duration': '时长', 'th.score': '得分',
      'th.alerts': '未处理/告警', 'th.state': '状态', 'board.empty': '暂无进行中的会话。', 'board.more': (n, total) => `显示最需关注的 ${n} 个，共 ${total} 个会话`,
      'st.open': '待处理', 'st.acknowledged': '已确认', 'st.false_alarm': '误报',
      'act.acknowledge': '确认', 'act.assign': '指派', 'act.note': '添加备注', 'act.false_alarm': '误报',
      'act.reopen': '恢复', 'act.work': '处理…', 'work.title': '处理告警', 'work.assignee': '指派给',
      'work.need-name': '请先在页面顶部填写你的名字。', 'work.failed': '操作失败：',
      'log.acknowledge': '确认', 'log.assign': '指派给', 'log.note': '备注', 'log.false_alarm': '标记误报', 'log.reopen': '恢复',
      assigned: (who) => `指派给 ${who}`, 'conv.open': '进行中', 'conv.closed': '已结束',
      'channel.call': '电话', 'channel.chat': '在线', 'channel.social': '社交媒体', 'channel.email': '邮件', 'none': '无',
      'agent.title': (a, h) => `坐席 ${a} · 本班次（最近 ${h} 小时）`,
      'agent.alerts': (n) => `告警 ${n} 条`, 'agent.score': (s, n) => `平均得分 ${s}（${n} 个已结束会话）`,
      'agent.no-score': '尚无已结束会话', 'agent.since': (t) => `统计始于 ${t}`, 'agent.list-since': (t) => `下表始于 ${t}`,
      'agent.pick': '请在筛选中填写坐席工号。', section: (name, d, max) => `${name}：扣 ${d}${max === null ? '' : ' / ' + max}`,
      'section.other': '其他（规则已不在词库中）', 'critical.notify': (c, conv) => `严重告警：${c} · ${conv}`,
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
      more: 'Show more', me: 'My name', 'notify.off': 'Enable alerts', 'notify.on': 'Alerts on', 'notify.denied': 'Notifications denied (sound only)',
      'view.feed': 'Feed', 'view.board': 'Live conversations', 'view.agent': 'Agent', export: 'Export false alarms (CSV)',
      'th.desk': 'Handling', 'th.worst': 'Needs attention', 'th.channel': 'Channel', 'th.duration': 'Duration', 'th.score': 'Score',
      'th.alerts': 'Open/alerts', 'th.state': 'State', 'board.empty': 'No live conversations.', 'board.more': (n, total) => `the ${n} most urgent of ${total} conversations`,
      'st.open': 'open', 'st.acknowledged': 'acknowledged', 'st.false_alarm': 'false alarm',
      'act.acknowledge': 'Acknowledge', 'act.assign': 'Assign', 'act.note': 'Add note', 'act.false_alarm': 'False alarm',
      'act.reopen': 'Reopen', 'act.work': 'Work…', 'work.title': 'Work the alert', 'work.assignee': 'Assign to',
      'work.need-name': 'Enter your name at the top of the page first.', 'work.failed': 'Failed: ',
      'log.acknowledge': 'acknowledged', 'log.assign': 'assigned to', 'log.note': 'note', 'log.false_alarm': 'marked false alarm', 'log.reopen': 'reopened',
      assigned: (who) => `assigned to ${who}`, 'conv.open': 'in progress', 'conv.closed': 'closed',
      'channel.call': 'call', 'channel.chat': 'chat', 'channel.social': 'social', 'channel.email': 'email', 'none': 'none',
      'agent.title': (a, h) => `Agent ${a} · this shift (last ${h} h)`,
      'agent.alerts': (n) => `${n} alerts`, 'agent.score': (s, n) => `average score ${s} (${n} closed conversations)`,
      'agent.no-score': 'no closed conversation yet', 'agent.since': (t) => `counted from ${t}`, 'agent.list-since': (t) => `the list below starts at ${t}`,
      'agent.pick': 'Enter an agent id in the filters.', section: (name, d, max) => `${name}: −${d}${max === null ? '' : ' / ' + max}`,
      'section.other': 'other (rules no longer in the lexicon)', 'critical.notify': (c, conv) => `Critical: ${c} · ${conv}`,
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
    showTitle();
    for (const e of document.querySelectorAll('[data-i18n]')) e.textContent = t(e.dataset.i18n);
    for (const e of document.querySelectorAll('[data-i18n-placeholder]')) e.placeholder = t(e.dataset.i18nPlaceholder);
    const button = $('lang');
    button.textContent = t('switch');
    button.lang = lang === 'en' ? 'zh-CN' : 'en';
    button.dataset.lang = lang;
    $('pause').textContent = t(state.paused ? 'resume' : 'pause');
    showAttention();
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

  // Formatters built once: toLocaleString builds one per call, which cost
  // most of the time of rendering a thousand rows.
  const TIME = new Intl.DateTimeFormat('zh-CN', { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
  const DATE_TIME = new Intl.DateTimeFormat('zh-CN', {
    year: 'numeric', month: 'numeric', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false,
  });
  function dateTimeOf(ms) {
    return DATE_TIME.format(ms);
  }

  function timeOf(ms) {
    return TIME.format(ms);
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
    state.rowLimit = PAGE_ROWS; // a new view starts with one page of rows
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
    if (state.view === 'board') loadBoard();
    if (state.view === 'agent') loadAgent();
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
  // Rows already built, by utterance key, with what they showed: a filter
  // change moves them back in instead of building them again.
  const rowCache = new Map();
  function rowSig(u) {
    return lang + '|' + u.items.map((i) => `${i.v.id}:${state.alerts.get(i.v.id)?.revision || 0}`).join(',');
  }

  function rowFor(u) {
    const cached = rowCache.get(u.key);
    if (cached && cached.sig === rowSig(u)) return cached.tr;
    return row(u);
  }

  function row(u) {
    const tr = buildRow(u);
    rowCache.set(u.key, { sig: rowSig(u), tr });
    return tr;
  }

  function buildRow(u) {
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
    time.title = t('spoken') + dateTimeOf(head.ts_ms);
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
    const status = rowStatus(vs);
    tr.dataset.status = status;
    tr.append(time, el('td', 'tenant', head.tenant), el('td', 'agent', agent || '–'), conv,
      category, sev, rules, text, deskCell(u, vs, status));
    return tr;
  }

  // ---- working alerts ----
  function statusOf(id) {
    const a = state.alerts.get(id);
    return a ? a.status : 'open';
  }

  // An utterance is open while any of its alerts is; else acknowledged,
  // or a false alarm when every one is.
  function rowStatus(vs) {
    const st = vs.map((v) => statusOf(v.id));
    if (st.includes('open')) return 'open';
    return st.every((x) => x === 'false_alarm') ? 'false_alarm' : 'acknowledged';
  }

  // The last mark on any alert of the utterance with this status.
  function markOf(vs, status) {
    const key = status === 'acknowledged' ? 'acknowledged' : 'false_alarm';
    return vs.map((v) => state.alerts.get(v.id)).filter((a) => a && a[key]).map((a) => a[key])
      .sort((a, b) => b.at_ms - a.at_ms)[0];
  }

  function statusBadge(status, mark) {
    const e = el('span', 'st', t('st.' + status) + (mark ? ` · ${mark.by} ${timeOf(mark.at_ms)}` : ''));
    e.dataset.status = status;
    return e;
  }

  function deskCell(u, vs, status) {
    const td = el('td', 'desk');
    td.append(statusBadge(status, status === 'open' ? null : markOf(vs, status)));
    const assignees = [...new Set(vs.map((v) => state.alerts.get(v.id)).filter((a) => a && a.assignee).map((a) => a.assignee))];
    if (assignees.length) td.append(el('span', 'assignee', t('assigned', assignees.join(', '))));
    if (status === 'open') {
      const ack = el('button', 'ack', t('act.acknowledge'));
      ack.type = 'button';
      ack.addEventListener('click', () => act(vs.filter((v) => statusOf(v.id) === 'open').map((v) => v.id), { action: 'acknowledge' }));
      td.append(ack);
    }
    const work = el('button', 'work', t('act.work'));
    work.type = 'button';
    work.addEventListener('click', () => openWork(u.key));
    td.append(work);
    return td;
  }

  // Sends one action for each alert id; errors shown in the work panel
  // (or the notice line). The new states come back to every browser as
  // `alert` events; the answer is applied at once too.
  async function act(ids, body) {
    const me = $('me').value.trim();
    if (!me) {
      showWorkError(t('work.need-name'));
      $('me').focus();
      return false;
    }
    for (const id of ids) {
      let res;
      try {
        res = await fetch(`/api/alerts/${encodeURIComponent(id)}`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json', ...authHeaders() },
          body: JSON.stringify({ ...body, by: me }),
          cache: 'no-store',
        });
      } catch (e) {
        showWorkError(t('work.failed') + e.message);
        return false;
      }
      if (!res.ok) {
        showWorkError(t('work.failed') + (await res.text()).slice(0, 300));
        return false;
      }
      onAlert(await res.json());
    }
    showWorkError('');
    return true;
  }

  function showWorkError(msg) {
    const e = $('work-error');
    e.textContent = msg;
    e.dataset.error = msg ? '1' : '';
    if (msg && $('work').hidden) {
      showNotice(null);
      $('notice').textContent = msg;
    }
  }

  // A shared alert state arrived (from any supervisor, any instance).
  function onAlert(a) {
    if (!a || typeof a.id !== 'string') return;
    const had = state.alerts.get(a.id);
    if (had && had.revision >= a.revision && a.revision) return;
    state.alerts.set(a.id, a);
    const tr = $('feed').querySelector(`tr[data-ids~="${CSS.escape(a.id)}"]`);
    if (tr) {
      const u = state.utterances.get(tr.dataset.key);
      if (u) tr.replaceWith(row(u));
    }
    if (state.work && state.utterances.get(state.work)?.items.some((i) => i.v.id === a.id)) renderWork();
    scheduleTallies();
    if (state.view === 'board') scheduleBoard();
  }

  function openWork(key) {
    state.work = key;
    $('work').hidden = false;
    showWorkError('');
    renderWork();
  }

  function renderWork() {
    const u = state.utterances.get(state.work);
    if (!u) return;
    const vs = u.items.map((i) => i.v);
    const shown = rowText(vs);
    const from = shown.text_start || 0;
    $('work').dataset.key = u.key;
    $('work').dataset.status = rowStatus(vs);
    $('work-text').replaceChildren(highlighted(shown.text, vs.flatMap(spansOf).map(([s, e]) => [s - from, e - from])));
    $('work-rules').replaceChildren(...vs.map((v) => {
      const li = el('li', null, `${nameOf(v)} · ${t('sev.' + v.severity)} · ${v.rule_id} `);
      li.dataset.id = v.id;
      const status = statusOf(v.id);
      li.dataset.status = status;
      li.append(statusBadge(status, null));
      const flip = status === 'false_alarm' ? 'reopen' : 'false_alarm';
      const b = el('button', flip, t('act.' + flip));
      b.type = 'button';
      b.addEventListener('click', () => act([v.id], { action: flip }));
      li.append(b);
      return li;
    }));
    const log = [];
    for (const v of vs) {
      const a = state.alerts.get(v.id);
      if (!a) continue;
      for (const l of a.log || []) log.push({ at: l.at_ms, by: l.by, what: t('log.' + l.action) + (l.action === 'assign' ? ' ' + (l.value || t('none')) : ''), text: null, rule: v.rule_id });
      for (const n of a.notes || []) log.push({ at: n.at_ms, by: n.by, what: t('log.note'), text: n.text, rule: v.rule_id });
    }
    log.sort((a, b) => a.at - b.at);
    $('work-log').replaceChildren(...log.map((l) => {
      const li = el('li', null, `${timeOf(l.at)} ${l.by} ${l.what} (${l.rule})`);
      if (l.text !== null) li.append(el('div', 'text', l.text));
      return li;
    }));
  }

  // ---- attention: the tab title, a sound, a desktop notification ----
  function openCritical() {
    let n = 0;
    for (const { v } of state.violations) if (v.severity === 'critical' && statusOf(v.id) === 'open') n++;
    return n;
  }

  function showTitle() {
    const n = openCritical();
    document.title = (n ? `(${n}) ` : '') + t('title');
    document.body.dataset.openCritical = String(n);
  }

  function showAttention() {
    const b = $('notify');
    const perm = 'Notification' in window ? Notification.permission : 'unsupported';
    b.dataset.on = state.attention ? '1' : '';
    b.dataset.permission = perm;
    b.textContent = !state.attention ? t('notify.off') : perm === 'granted' ? t('notify.on') : t('notify.denied');
  }

  let audio = null;
  async function enableAttention() {
    state.attention = !state.attention || !audio;
    localStorage.setItem('zhijian-attention', state.attention ? '1' : '0');
    if (state.attention) {
      // Created in the click: browsers only let a page play sound after a gesture.
      try {
        audio = audio || new AudioContext();
      } catch (e) {
        audio = null;
      }
      if ('Notification' in window && Notification.permission === 'default') {
        try {
          await Notification.requestPermission();
        } catch (e) {
          // denied or unavailable: sound only
        }
      }
    }
    showAttention();
  }

  // A critical alert raised just now (not one replayed from the history).
  function signalCritical(v, raised) {
    if (!state.attention || Date.now() - raised > 60000 || statusOf(v.id) !== 'open') return;
    state.beeps += 1;
    document.body.dataset.beeps = String(state.beeps);
    if (audio) {
      try {
        const osc = audio.createOscillator();
        const gain = audio.createGain();
        osc.frequency.value = 880;
        gain.gain.value = 0.1;
        osc.connect(gain).connect(audio.destination);
        osc.start();
        osc.stop(audio.currentTime + 0.25);
      } catch (e) {
        // no sound device
      }
    }
    if ('Notification' in window && Notification.permission === 'granted') {
      // Text only: a notification renders no markup.
      const n = new Notification(t('critical.notify', nameOf(v), v.conversation_id), { body: v.text, tag: v.id });
      n.onclick = () => {
        window.focus();
        openDetail(v.tenant, v.conversation_id);
      };
    }
  }

  // ---- views: the feed, the live conversations board, one agent ----
  const VIEWS = ['feed', 'board', 'agent'];
  function showView() {
    for (const v of VIEWS) {
      $(v + '-view').hidden = state.view !== v;
      $('v-' + v).setAttribute('aria-pressed', String(state.view === v));
    }
    document.body.dataset.view = state.view;
    if (state.view === 'board') loadBoard();
    if (state.view === 'agent') loadAgent();
  }

  function setView(v) {
    state.view = VIEWS.includes(v) ? v : 'feed';
    const url = new URL(location.href);
    if (state.view === 'feed') url.searchParams.delete('view');
    else url.searchParams.set('view', state.view);
    history.replaceState(history.state, '', url.pathname + url.search + url.hash);
    showView();
  }

  function durationOf(ms) {
    const s = Math.floor(ms / 1000);
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const pad = (n) => String(n).padStart(2, '0');
    return (h ? `${h}:${pad(m)}` : String(m)) + ':' + pad(s % 60);
  }

  function filterQuery() {
    const q = new URLSearchParams();
    if (state.filter.tenant) q.set('tenant', state.filter.tenant);
    if (state.filter.agent) q.set('agent', state.filter.agent);
    return q.toString();
  }

  let boardDue = null;
  function scheduleBoard() {
    if (boardDue) return;
    boardDue = setTimeout(() => {
      boardDue = null;
      if (state.view === 'board') loadBoard();
    }, 300);
  }

  let boardRequest = 0;
  async function loadBoard() {
    const mine = ++boardRequest;
    let view;
    try {
      const res = await fetch('/api/board?' + filterQuery(), { headers: authHeaders(), cache: 'no-store' });
      if (!res.ok) throw new Error('HTTP ' + res.status);
      view = await res.json();
    } catch (e) {
      return;
    }
    if (mine !== boardRequest) return;
    // The severity and category filters pick conversations by their worst
    // open alert.
    const f = state.filter;
    const rows = view.rows.filter((r) => (!f.severity || r.worst_open?.severity === f.severity)
      && (!f.category || r.worst_open?.category === f.category));
    $('board').replaceChildren(...rows.map(boardRow));
    $('board-empty').hidden = rows.length > 0;
    const more = $('board-more');
    more.dataset.total = String(view.total);
    more.textContent = view.total > view.rows.length ? t('board.more', view.rows.length, view.total) : '';
  }

  function boardRow(r) {
    const w = r.worst_open;
    const tr = el('tr', (w ? 'sev-' + w.severity : '') + (r.open ? '' : ' closed'));
    tr.dataset.tenant = r.tenant;
    tr.dataset.conversation = r.conversation_id;
    tr.dataset.agent = r.agent_id || '';
    tr.dataset.severity = w ? w.severity : '';
    tr.dataset.open = String(r.open);
    tr.dataset.score = String(r.score);
    const worst = el('td', 'worst');
    if (w) {
      worst.append(el('span', 'sev', t('sev.' + w.severity)), el('span', 'cat', w.category_name || categoryLabel(w.category)));
      worst.title = w.rule_id;
      worst.dataset.id = w.id;
    } else {
      worst.textContent = '–';
    }
    const conv = el('td');
    const link = el('button', 'conv', r.conversation_id);
    link.type = 'button';
    link.addEventListener('click', () => openDetail(r.tenant, r.conversation_id));
    conv.append(link);
    const agent = el('td', 'agent');
    if (r.agent_id) {
      const a = el('button', 'conv', r.agent_id);
      a.type = 'button';
      a.addEventListener('click', () => showAgent(r.agent_id));
      agent.append(a);
    } else {
      agent.textContent = '–';
    }
    tr.append(worst, el('td', 'tenant', r.tenant), conv, agent,
      el('td', 'channel', r.channel ? t('channel.' + r.channel) : '–'),
      el('td', 'duration', durationOf(r.duration_ms)),
      el('td', 'score', r.score),
      el('td', 'alerts', `${r.open_alerts}/${r.alerts}`),
      el('td', 'state', r.open ? t('conv.open') : t('conv.closed')));
    return tr;
  }

  function showAgent(agent) {
    $('f-agent').value = agent;
    filtersChanged();
    setView('agent');
  }

  let agentRequest = 0;
  async function loadAgent() {
    const agent = state.filter.agent;
    const mine = ++agentRequest;
    if (!agent) {
      $('agent-title').textContent = t('agent.pick');
      $('agent-stats').replaceChildren();
      $('agent-alerts').replaceChildren();
      return;
    }
    let view;
    try {
      const q = state.filter.tenant ? '?tenant=' + encodeURIComponent(state.filter.tenant) : '';
      const res = await fetch(`/api/agents/${encodeURIComponent(agent)}${q}`, { headers: authHeaders(), cache: 'no-store' });
      if (!res.ok) throw new Error('HTTP ' + res.status);
      view = await res.json();
    } catch (e) {
      $('agent-stats').textContent = t('detail.error') + e.message;
      return;
    }
    if (mine !== agentRequest) return;
    const hours = Math.round((Date.now() - view.since_ms) / 3600000);
    $('agent-title').textContent = t('agent.title', view.agent_id, hours);
    const stats = [el('span', 'alerts', t('agent.alerts', view.alerts))];
    for (const sev of SEVERITIES) {
      if (view.by_severity[sev]) stats.push(el('span', 'sev-' + sev, `${t('sev.' + sev)} ${view.by_severity[sev]}`));
    }
    const score = el('span', 'avg', view.average_score === null ? t('agent.no-score') : t('agent.score', view.average_score, view.conversations_closed));
    score.dataset.score = view.average_score === null ? '' : String(view.average_score);
    stats.push(score);
    if (view.counted_from_ms && view.counted_from_ms > view.since_ms) {
      stats.push(el('span', 'since', t('agent.since', dateTimeOf(view.counted_from_ms))));
    }
    if (view.history_from_ms && view.history_from_ms > view.since_ms) {
      stats.push(el('span', 'since', t('agent.list-since', dateTimeOf(view.history_from_ms))));
    }
    const box = $('agent-stats');
    box.dataset.alerts = String(view.alerts);
    box.replaceChildren(...stats);
    $('agent-alerts').replaceChildren(...view.recent.map((a) => {
      const tr = el('tr', 'sev-' + a.severity);
      tr.dataset.id = a.id;
      const conv = el('td');
      const link = el('button', 'conv', a.conversation_id);
      link.type = 'button';
      link.addEventListener('click', () => openDetail(a.tenant, a.conversation_id));
      conv.append(link);
      const status = statusOf(a.id);
      tr.append(el('td', 'time', timeOf(a.raised_ms)), conv, el('td', 'category', a.category_name || categoryLabel(a.category)),
        el('td', 'sev', t('sev.' + a.severity)), el('td', 'rule', a.rule_id), el('td', 'desk'));
      tr.lastChild.append(statusBadge(status, null));
      return tr;
    }));
  }

  function renderFeed() {
    const f = filters();
    const body = $('feed');
    const rows = [];
    // Newest utterance first (the map keeps them in order of their first
    // violation).
    const all = [...state.utterances.values()];
    let more = false;
    for (let i = all.length - 1; i >= 0; i--) {
      if (!utterancePasses(all[i], f)) continue;
      if (rows.length === state.rowLimit) {
        more = true;
        break;
      }
      rows.push(rowFor(all[i]));
    }
    $('more').hidden = !more;
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
      showTitle();
      document.body.dataset.alerts = String(state.violations.length);
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
      if (state.view === 'board') scheduleBoard();
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
        if (!ou.items.length) {
          state.utterances.delete(ou.key);
          rowCache.delete(ou.key);
        }
      }
    }
    if (!state.tenants.has(ev.tenant)) {
      state.tenants.add(ev.tenant);
      renderTenants();
    }
    if (learnCategory(ev.category, ev.category_name)) renderCategories();
    scheduleTallies();
    refreshDetail(ev.tenant, ev.conversation_id);
    if (state.view === 'board') scheduleBoard();
    if (ev.severity === 'critical') signalCritical(ev, item.raised);
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
    while (body.rows.length > state.rowLimit) {
      body.lastElementChild.remove();
      $('more').hidden = false;
    }
    $('empty').hidden = true;
  }

  // The output stream was recreated on the server: sequence numbers start
  // over, so does the page.
  function startOver() {
    state.lastSeq = null;
    state.violations = [];
    state.utterances.clear();
    rowCache.clear();
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
        } else if (name === 'alert' && data.length) {
          onAlert(JSON.parse(data.join('\n')));
        } else if (name === 'message' && id !== null && data.length) {
          onEvent(Number(id), JSON.parse(data.join('\n')));
        }
      }
    }
  }

  // ---- conversation detail ----
  async function openDetail(tenant, id) {
    state.detail = { tenant, id };
    setUrlParam('conv', `${tenant}/${id}`);
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
    // The score by scorecard section (the lexicon's names).
    $('detail-sections').replaceChildren(...(view.sections || []).map((sec) => {
      const li = el('li', null, t('section', sec.id ? sec.name : t('section.other'), sec.deducted, sec.max_deduct));
      li.dataset.section = sec.id;
      li.dataset.deducted = String(sec.deducted);
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
      box.replaceChildren(el('span', 'score', view.score), document.createTextNode(' ' + t('progress', view.violations.length)));
      box.dataset.running = String(view.score);
      delete box.dataset.score;
    }
  }

  // ---- controls ----
  function setUrlParam(k, v) {
    const url = new URL(location.href);
    if (v) url.searchParams.set(k, v);
    else url.searchParams.delete(k);
    history.replaceState(history.state, '', url.pathname + url.search + url.hash);
  }

  function init() {
    filtersFromUrl();
    applyLabels();
    const q = new URLSearchParams(location.search);
    state.view = VIEWS.includes(q.get('view')) ? q.get('view') : 'feed';
    showView();
    const conv = q.get('conv') || '';
    const cut = conv.indexOf('/');
    if (cut > 0) openDetail(conv.slice(0, cut), conv.slice(cut + 1));
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
      if (state.work) renderWork();
      showView();
    });
    $('pause').addEventListener('click', () => {
      state.paused = !state.paused;
      $('pause').textContent = t(state.paused ? 'resume' : 'pause');
      if (!state.paused) renderFeed();
    });
    $('detail-close').addEventListener('click', () => {
      state.detail = null;
      $('detail').hidden = true;
      setUrlParam('conv', '');
    });
    for (const v of VIEWS) $('v-' + v).addEventListener('click', () => setView(v));
    $('more').addEventListener('click', () => {
      state.rowLimit = Math.min(state.rowLimit + PAGE_ROWS, MAX_ROWS);
      renderFeed();
    });
    $('me').value = state.me;
    $('me').addEventListener('change', () => {
      state.me = $('me').value.trim();
      localStorage.setItem('zhijian-me', state.me);
    });
    $('notify').addEventListener('click', enableAttention);
    $('work-close').addEventListener('click', () => {
      state.work = null;
      $('work').hidden = true;
    });
    const workIds = (open) => {
      const u = state.utterances.get(state.work);
      return u ? u.items.map((i) => i.v.id).filter((id) => !open || statusOf(id) === 'open') : [];
    };
    $('work-ack').addEventListener('click', () => act(workIds(true), { action: 'acknowledge' }));
    $('work-assign').addEventListener('click', () => act(workIds(false), { action: 'assign', assignee: $('work-assignee').value }));
    $('work-add-note').addEventListener('click', async () => {
      if (await act(workIds(false), { action: 'note', note: $('work-note').value })) $('work-note').value = '';
    });
    // The export carries the token when there is one: fetched, then saved.
    $('export').addEventListener('click', async (e) => {
      if (!state.token) return;
      e.preventDefault();
      const res = await fetch('/api/false-alarms?format=csv', { headers: authHeaders(), cache: 'no-store' });
      const a = document.createElement('a');
      a.href = URL.createObjectURL(await res.blob());
      a.download = 'zhijian-false-alarms.csv';
      a.click();
      URL.revokeObjectURL(a.href);
    });
    setInterval(() => {
      if (state.view === 'board') loadBoard();
    }, 2000);
    setInterval(() => {
      if (state.view === 'agent') loadAgent();
    }, 10000);
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
