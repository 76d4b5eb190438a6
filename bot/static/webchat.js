// chargebot local web chat — vanilla ES2020, no build step, no network
// besides our own server.
//
// Who we are is the server's to say: it issues this browser's identity in an HttpOnly cookie
// (cb_chat), and a staff member's login in another (cb_staff). The page never sees either.
// Server contract (all JSON):
//   GET  /webchat/api/ui?lang=zh_CN|en
//        -> {lang, strings:{title, placeholder, send, share_location, scan_qr,
//            pick_location, pick_port, connecting, offline, language, too_many_chats,
//            login_*, logged_in_as, logout},
//            locations:[{name, lat, lon}], ports:["P0001-01", ...],
//            chat:KEY (names this identity's saved transcript), staff:NAME|null}
//   POST /webchat/api/send  {text} | {data} | {location:{lat, lon}} | {photo:REF, text?:caption}
//        -> {replies:[REPLY, ...], lang, chat, identity_changed?:true (after /logout)}
//   POST /webchat/api/photo   multipart/form-data, field "photo"
//        -> {ref:"webchat:<sha256>"}  (REF for send), or 400/429
//           {error, field:"photo", reason:"too_large"|"not_image"|"empty"|"too_many"}
//   GET  /webchat/api/messages?after=SEQ&wait=25   (long poll)
//        -> {messages:[{seq, reply:REPLY}], lang, chat}
//   POST /webchat/api/login {staff:"telegram:<id>"|"wechat:<openid>", password}
//        -> {ok, name} | 401 {reason:"wrong"} | 429 {reason:"too_many_tries"}
//   Any of them: 429 {reason:"too_many_chats"} when this address got too many new identities.
//   The demo (server.webchat_demo_identities) also honours ?as=demo-technician on each call.
//   REPLY = {text, buttons:[[{label, data} | {label, url}]],
//            venue:{lat, lon, title, address}|null, location:{lat, lon}|null,
//            photo_url|null}
//
// Server text is only ever inserted with textContent (never innerHTML).
(() => {
  'use strict';

  const API = '/webchat/api';
  const LS = 'chargebot.webchat.';
  const MAX_LOG = 300;          // transcript entries kept in localStorage
  const POLL_WAIT = 25;         // seconds the server may hold a long poll
  const BACKOFF_MIN = 1000;
  const BACKOFF_MAX = 10000;
  const DEFAULT_LANG = 'zh_CN';

  // Last-resort strings, used only while GET /webchat/api/ui is failing.
  const FALLBACK = {
    zh_CN: {
      title: '充电助手', placeholder: '输入消息…', send: '发送',
      share_location: '发送位置', scan_qr: '扫码', pick_location: '选择位置',
      pick_port: '选择充电口', connecting: '正在连接…', offline: '网络已断开，正在重试…',
      language: 'English', send_photo: '发送照片',
      too_many_chats: '你所在的网络在一小时内新开的对话太多了，请稍后再试。',
      login_title: '员工登录', login_account: '账号：telegram:<用户ID> 或 wechat:<openid>',
      login_password: '密码', login_submit: '登录', login_wrong: '账号或密码不对。',
      login_too_many: '密码错误次数太多，请15分钟后再试。', logged_in_as: '员工：{name}',
      logout: '退出登录',
      photo_too_large: '照片太大，请换一张小一点的。',
      photo_too_many: '今天发送的照片太多了，请明天再试。',
      photo_not_image: '这不是可用的照片（JPEG、PNG、WebP 或 GIF）。',
      text_too_long: '消息太长了，最多 1,000 个字，请分几条发送。',
      bad_request: '这条消息发送不了，请换个说法再试。',
      close: '关闭',
    },
    en: {
      title: 'Charging bot', placeholder: 'Message…', send: 'Send',
      share_location: 'Share location', scan_qr: 'Scan QR', pick_location: 'Pick a location',
      pick_port: 'Pick a port', connecting: 'Connecting…', offline: 'Offline, retrying…',
      language: '中文', send_photo: 'Send a photo',
      too_many_chats: 'Too many new chats from your network in the last hour. Please try again later.',
      login_title: 'Staff login', login_account: 'Account: telegram:<user id> or wechat:<openid>',
      login_password: 'Password', login_submit: 'Log in', login_wrong: 'Wrong account or password.',
      login_too_many: 'Too many wrong passwords. Please wait 15 minutes.', logged_in_as: 'Staff: {name}',
      logout: 'Log out',
      photo_too_large: 'That photo is too large. Please send a smaller one.',
      photo_too_many: 'You have sent too many photos today. Please try again tomorrow.',
      photo_not_image: 'That file is not a photo we can use (JPEG, PNG, WebP or GIF).',
      text_too_long: 'That message is too long: at most 1,000 characters. Please send it in parts.',
      bad_request: 'That message could not be sent. Please try rewording it.',
      close: 'Close',
    },
  };

  // ---------------------------------------------------------------- storage
  const store = {
    get(key) {
      try { return localStorage.getItem(LS + key); } catch { return null; }
    },
    set(key, value) {
      try { localStorage.setItem(LS + key, value); } catch { /* private mode / quota */ }
    },
  };

  function uuid() {
    if (typeof crypto.randomUUID === 'function') {
      try { return crypto.randomUUID(); } catch { /* insecure context */ }
    }
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  // ?as=demo-technician (or demo-supervisor): the demo city's staff, which only `chargebot
  // demo` honours; sent along with every call, so one browser can show both sides at once.
  const pageParams = new URLSearchParams(location.search);
  const as = pageParams.get('as');
  const AS = as && /^[A-Za-z0-9-]{1,64}$/.test(as) ? as : null;

  function apiUrl(path, params) {
    const qs = new URLSearchParams(params || {});
    if (AS) qs.set('as', AS);
    const q = qs.toString();
    return `${API}/${path}${q ? `?${q}` : ''}`;
  }

  // The transcript is kept per identity; the server names it (`chat` from /ui).
  const chatKey = () => (AS ? `as.${AS}` : (store.get('chat') || 'pending'));
  const seqKey = () => `seq.${chatKey()}`;
  const logKey = () => `log.${chatKey()}`;

  function loadLog() {
    try {
      const parsed = JSON.parse(store.get(logKey()) || '[]');
      return Array.isArray(parsed) ? parsed.filter((e) => e && typeof e === 'object') : [];
    } catch { return []; }
  }

  const state = {
    lang: store.get('lang') || DEFAULT_LANG,
    strings: null,
    locations: [],
    ports: [],
    lastSeq: 0,
    log: [],
    uiLoaded: false,
    uiRequest: 0,
    pending: 0,
    booted: false,
    staff: null,
  };

  function saveLog() {
    if (state.log.length > MAX_LOG) state.log.splice(0, state.log.length - MAX_LOG);
    // Rider messages not (yet) delivered are not kept: a reload starts clean.
    const plain = state.log
      .filter((e) => e.status !== 'pending' && e.status !== 'failed' && e.status !== 'rejected')
      .map(({ status, ...rest }) => rest); // eslint-disable-line no-unused-vars
    store.set(logKey(), JSON.stringify(plain));
  }

  // DOM nodes and unsent payloads of rider entries: kept out of the saved log.
  const meta = new WeakMap();

  function t(key) {
    const s = state.strings && state.strings[key];
    if (typeof s === 'string' && s) return s;
    return (FALLBACK[state.lang] || FALLBACK[DEFAULT_LANG])[key] || '';
  }

  // A refusal the server explains (HTTP 429 with a reason): e.g. too many new chats.
  class Refused extends Error {
    constructor(reason, status) {
      super(`refused: ${reason}`);
      this.reason = reason;
      this.status = status;
    }
  }

  // The server answers as another identity than the one shown (the staff session expired, or
  // ended in another tab): start over as that one.
  function checkChat(chat) {
    if (AS || !state.booted || typeof chat !== 'string' || !chat) return false;
    if (chat === store.get('chat')) return false;
    store.set('chat', chat);
    location.reload();
    return true;
  }

  async function refusal(res) {
    if (res.status !== 429) return null;
    const data = await res.clone().json().catch(() => ({}));
    return data && typeof data.reason === 'string' ? new Refused(data.reason, res.status) : null;
  }

  // ------------------------------------------------------------------ icons
  const ICONS = {
    bolt: 'M13 2 4.5 13.5H11L10 22l8.5-11.5H12L13 2z',
    globe: 'M12 3a9 9 0 1 0 0 18 9 9 0 0 0 0-18zM3 12h18M12 3c2.5 2.6 3.8 5.6 3.8 9s-1.3 6.4-3.8 9c-2.5-2.6-3.8-5.6-3.8-9S9.5 5.6 12 3z',
    pin: 'M12 21s-6.5-6.2-6.5-11.2a6.5 6.5 0 0 1 13 0C18.5 14.8 12 21 12 21zM12 12.3a2.5 2.5 0 1 0 0-5 2.5 2.5 0 0 0 0 5z',
    qr: 'M4 4h6v6H4zM14 4h6v6h-6zM4 14h6v6H4zM14 14h2.5v2.5H14zM17.5 17.5H20V20h-2.5zM17.5 14H20M14 20h.01M7 7h.01M17 7h.01M7 17h.01',
    close: 'M6 6l12 12M18 6 6 18',
    crosshair: 'M12 3v3M12 18v3M3 12h3M18 12h3M12 7a5 5 0 1 0 0 10 5 5 0 0 0 0-10zM12 11.2a.8.8 0 1 0 0 1.6.8.8 0 0 0 0-1.6z',
    plug: 'M9 3v5M15 3v5M6.5 8h11v3.5a5.5 5.5 0 0 1-11 0zM12 17v4',
    external: 'M14 4h6v6M20 4l-9 9M18 14v5a1 1 0 0 1-1 1H5a1 1 0 0 1-1-1V7a1 1 0 0 1 1-1h5',
    clock: 'M12 3a9 9 0 1 0 0 18 9 9 0 0 0 0-18zM12 7v5l3 2',
    retry: 'M12 3a9 9 0 1 0 0 18 9 9 0 0 0 0-18zM12 7.5v5.5M12 16.2v.3',
    check: 'M5 12.5l4.5 4.5L19 7.5',
    camera: 'M4 8h3.5l2-2.5h5l2 2.5H20v11H4zM12 10a3.5 3.5 0 1 0 0 7 3.5 3.5 0 0 0 0-7z',
    touch: 'M9 11V5.5a1.5 1.5 0 0 1 3 0V11m0-1.5a1.5 1.5 0 0 1 3 0V12m0-1a1.5 1.5 0 0 1 3 0v3.5A6.5 6.5 0 0 1 11.5 21h-.6a5 5 0 0 1-4-2L4 15.2a1.5 1.5 0 0 1 2.3-1.9L9 16',
  };

  function icon(name, cls) {
    const NS = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(NS, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('focusable', 'false');
    svg.setAttribute('class', `icon${cls ? ` ${cls}` : ''}`);
    const path = document.createElementNS(NS, 'path');
    path.setAttribute('d', ICONS[name] || '');
    svg.appendChild(path);
    return svg;
  }

  // --------------------------------------------------------------- elements
  const $ = (id) => document.getElementById(id);
  const el = {
    title: $('title'),
    langBtn: $('lang-btn'),
    langLabel: $('lang-label'),
    who: $('who'),
    banner: $('banner'),
    log: $('log'),
    composer: $('composer'),
    locBtn: $('loc-btn'),
    qrBtn: $('qr-btn'),
    photoBtn: $('photo-btn'),
    photoInput: $('photo-input'),
    input: $('input'),
    sendBtn: $('send-btn'),
    sheet: $('sheet'),
    sheetTitle: $('sheet-title'),
    sheetList: $('sheet-list'),
    sheetClose: $('sheet-close'),
  };

  for (const node of document.querySelectorAll('[data-icon]')) {
    node.appendChild(icon(node.dataset.icon));
  }

  function h(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text != null) node.textContent = String(text);
    return node;
  }

  // ---------------------------------------------------------------- helpers
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function locale() {
    return state.lang.replace('_', '-');
  }

  function fmtTime(ts) {
    const d = new Date(ts || Date.now());
    const opts = { hour: '2-digit', minute: '2-digit' };
    if (new Date().toDateString() !== d.toDateString()) {
      opts.month = 'numeric';
      opts.day = 'numeric';
    }
    try { return d.toLocaleString(locale(), opts); } catch { return d.toLocaleString(undefined, opts); }
  }

  function fmtCoord(x) {
    const n = Number(x);
    return Number.isFinite(n) ? String(+n.toFixed(6)) : '?';
  }

  function validCoords(obj) {
    return obj && typeof obj === 'object'
      && Number.isFinite(Number(obj.lat)) && Number.isFinite(Number(obj.lon));
  }

  // Only http(s) links / images; rejects javascript:, data: etc.
  function safeUrl(raw) {
    if (typeof raw !== 'string' || !raw) return null;
    try {
      const u = new URL(raw, window.location.href);
      return u.protocol === 'http:' || u.protocol === 'https:' ? u.href : null;
    } catch { return null; }
  }

  function amapUrl(lat, lon, name) {
    let url = `https://uri.amap.com/marker?position=${fmtCoord(lon)},${fmtCoord(lat)}`;
    if (name) url += `&name=${encodeURIComponent(name)}`;
    return url;
  }

  // ----------------------------------------------------------------- banner
  let bannerTimer = 0;
  let bannerKey = null;

  function showBanner(key, delay = 0) {
    clearTimeout(bannerTimer);
    const apply = () => {
      bannerKey = key;
      el.banner.textContent = t(key);
      el.banner.className = `banner ${key}`;
      el.banner.hidden = false;
    };
    if (delay) bannerTimer = setTimeout(apply, delay); else apply();
  }

  function hideBanner() {
    clearTimeout(bannerTimer);
    bannerKey = null;
    el.banner.hidden = true;
  }

  // --------------------------------------------------------------- ui strings
  function applyStrings() {
    const lang = locale();
    document.documentElement.lang = lang;
    document.title = t('title');
    el.title.textContent = t('title');
    el.langLabel.textContent = t('language');
    el.langBtn.title = t('language');
    el.input.placeholder = t('placeholder');
    el.input.setAttribute('aria-label', t('placeholder'));
    el.sendBtn.textContent = t('send');
    for (const [btn, key] of [[el.locBtn, 'share_location'], [el.qrBtn, 'scan_qr'],
      [el.photoBtn, 'send_photo'], [el.sheetClose, 'close']]) {
      btn.title = t(key);
      btn.setAttribute('aria-label', t(key));
    }
    if (bannerKey) el.banner.textContent = t(bannerKey);
    if (state.staff) {
      el.who.textContent = t('logged_in_as').replace('{name}', state.staff);
      el.who.hidden = false;
    } else {
      el.who.hidden = true;
    }
    if (sheetKind) renderSheet();
  }

  async function loadUi(lang) {
    const req = ++state.uiRequest;
    const res = await fetch(apiUrl('ui', { lang }), { cache: 'no-store' });
    const refused = await refusal(res);
    if (refused) throw refused;
    if (!res.ok) throw new Error(`ui: HTTP ${res.status}`);
    const data = await res.json();
    if (req !== state.uiRequest) return; // a newer request superseded this one
    if (!AS && typeof data.chat === 'string' && data.chat && data.chat !== store.get('chat')) {
      store.set('chat', data.chat);
      // Another identity than the one shown (a login or logout elsewhere): start over as it.
      if (state.booted) { location.reload(); return; }
    }
    state.staff = typeof data.staff === 'string' && data.staff ? data.staff : null;
    state.lang = typeof data.lang === 'string' && data.lang ? data.lang : lang;
    store.set('lang', state.lang);
    state.strings = data.strings && typeof data.strings === 'object' ? data.strings : {};
    state.locations = Array.isArray(data.locations)
      ? data.locations.filter((l) => validCoords(l)) : [];
    state.ports = Array.isArray(data.ports)
      ? data.ports.filter((p) => typeof p === 'string' && p) : [];
    state.uiLoaded = true;
    applyStrings();
  }

  // Keeps retrying (with backoff) until the ui strings load.
  async function loadUiRetrying(lang, backoff = 0) {
    for (;;) {
      if (backoff) await sleep(backoff);
      try {
        await loadUi(lang);
        if (bannerKey === 'offline') hideBanner();
        return;
      } catch (err) {
        console.warn(err);
        applyStrings();
        showBanner(err instanceof Refused && err.reason === 'too_many_chats' ? 'too_many_chats' : 'offline');
        backoff = Math.min(Math.max(backoff * 2, BACKOFF_MIN), BACKOFF_MAX);
        lang = state.lang;
      }
    }
  }

  function maybeSwitchLang(lang) {
    if (typeof lang !== 'string' || !lang || lang === state.lang) return;
    state.lang = lang;
    store.set('lang', lang);
    applyStrings(); // fallback strings in the new language until the catalog arrives
    loadUiRetrying(lang);
  }

  // -------------------------------------------------------------- rendering
  let scrollQueued = false;
  function scrollToBottom() {
    if (scrollQueued) return;
    scrollQueued = true;
    requestAnimationFrame(() => {
      scrollQueued = false;
      el.log.scrollTop = el.log.scrollHeight;
    });
  }

  function normalizeReply(reply) {
    if (typeof reply === 'string') return { text: reply };
    return reply && typeof reply === 'object' ? reply : { text: '' };
  }

  function placeCard(lat, lon, title, address) {
    const card = h('a', 'card');
    card.href = amapUrl(lat, lon, title);
    card.target = '_blank';
    card.rel = 'noopener noreferrer';
    const pinBox = h('span', 'card-icon');
    pinBox.appendChild(icon('pin'));
    card.appendChild(pinBox);
    const body = h('span', 'card-body');
    if (title) body.appendChild(h('span', 'card-title', title));
    if (address) body.appendChild(h('span', 'card-addr', address));
    const coord = h('span', 'card-coord', `${fmtCoord(lat)}, ${fmtCoord(lon)}`);
    coord.appendChild(icon('external', 'tiny'));
    body.appendChild(coord);
    card.appendChild(body);
    return card;
  }

  function renderKeyboard(entry, buttons) {
    const kb = h('div', 'kb');
    const used = new Set(Array.isArray(entry.used) ? entry.used : []);
    buttons.forEach((row, ri) => {
      if (!Array.isArray(row)) return;
      const rowEl = h('div', 'kb-row');
      for (const btn of row) {
        if (!btn || typeof btn !== 'object') continue;
        const label = btn.label == null ? '' : String(btn.label);
        const href = btn.url != null ? safeUrl(btn.url) : null;
        if (href) {
          const a = h('a', 'kb-btn url');
          a.href = href;
          a.target = '_blank';
          a.rel = 'noopener noreferrer';
          a.appendChild(h('span', 'kb-label', label));
          a.appendChild(icon('external', 'tiny'));
          rowEl.appendChild(a);
        } else if (btn.data != null) {
          const b = h('button', 'kb-btn');
          b.type = 'button';
          b.appendChild(h('span', 'kb-label', label));
          if (used.has(ri)) b.disabled = true;
          if (Array.isArray(entry.pressed) && entry.pressed.some((p) => p[0] === ri && p[1] === label)) {
            b.classList.add('pressed');
          }
          b.addEventListener('click', () => pressButton(entry, ri, rowEl, b, label, String(btn.data)));
          rowEl.appendChild(b);
        }
      }
      if (rowEl.childElementCount) kb.appendChild(rowEl);
    });
    return kb.childElementCount ? kb : null;
  }

  function pressButton(entry, ri, rowEl, button, label, data) {
    if (button.disabled) return;
    for (const b of rowEl.querySelectorAll('button')) b.disabled = true;
    button.classList.add('pressed');
    entry.used = [...(entry.used || []), ri];
    entry.pressed = [...(entry.pressed || []), [ri, label]];
    saveLog();
    sendAction({ data }, { text: label, icon: 'touch' });
  }

  function timeLine(entry) {
    const line = h('span', 'time');
    line.appendChild(h('span', null, fmtTime(entry.ts)));
    return line;
  }

  function renderBot(entry) {
    const reply = normalizeReply(entry.reply);
    const wrap = h('div', 'msg bot');
    const bubble = h('div', 'bubble');

    const photo = safeUrl(reply.photo_url);
    if (photo) {
      const img = h('img', 'photo');
      img.alt = '';
      img.decoding = 'async';
      img.src = photo;
      img.addEventListener('load', scrollToBottom);
      img.addEventListener('error', () => img.remove());
      bubble.appendChild(img);
      wrap.classList.add('has-photo');
    }
    if (reply.text != null && String(reply.text) !== '') {
      bubble.appendChild(h('div', 'text', reply.text));
    }
    if (validCoords(reply.venue)) {
      const v = reply.venue;
      bubble.appendChild(placeCard(v.lat, v.lon,
        v.title == null ? '' : String(v.title), v.address == null ? '' : String(v.address)));
    } else if (validCoords(reply.location)) {
      bubble.appendChild(placeCard(reply.location.lat, reply.location.lon, '', ''));
    }
    bubble.appendChild(timeLine(entry));
    wrap.appendChild(bubble);

    if (Array.isArray(reply.buttons) && reply.buttons.length) {
      const kb = renderKeyboard(entry, reply.buttons);
      if (kb) {
        wrap.appendChild(kb);
        wrap.classList.add('has-kb');
      }
    }
    return wrap;
  }

  function renderMe(entry) {
    const wrap = h('div', 'msg me');
    const bubble = h('div', 'bubble');
    const text = h('div', 'text');
    if (entry.icon && ICONS[entry.icon]) {
      text.appendChild(icon(entry.icon, 'inline'));
      text.appendChild(document.createTextNode(' '));
    }
    text.appendChild(document.createTextNode(entry.text == null ? '' : String(entry.text)));
    bubble.appendChild(text);
    const line = timeLine(entry);
    const status = h('span', 'status');
    line.appendChild(status);
    bubble.appendChild(line);
    wrap.appendChild(bubble);
    meta.set(entry, { ...meta.get(entry), wrap, status });
    setStatus(entry, entry.status || 'sent');
    return wrap;
  }

  function setStatus(entry, status) {
    entry.status = status;
    const m = meta.get(entry);
    if (!m || !m.wrap) return;
    const { wrap, status: box } = m;
    box.replaceChildren();
    wrap.classList.toggle('failed', status === 'failed' || status === 'rejected');
    if (status === 'pending') {
      box.appendChild(icon('clock'));
    } else if (status === 'rejected') {
      // The server refused the message or file itself: retrying cannot help, so say why.
      box.appendChild(icon('retry'));
      const key = {
        too_large: 'photo_too_large', too_many: 'photo_too_many',
        text_too_long: 'text_too_long', bad_request: 'bad_request',
      }[m.rejected] || 'photo_not_image';
      const note = h('div', 'note', t(key));
      wrap.querySelector('.bubble').appendChild(note);
    } else if (status === 'failed') {
      const retry = h('button', 'retry');
      retry.type = 'button';
      retry.setAttribute('aria-label', t('offline'));
      retry.title = t('offline');
      retry.appendChild(icon('retry'));
      retry.addEventListener('click', () => deliver(entry));
      box.appendChild(retry);
    } else {
      box.appendChild(icon('check'));
    }
  }

  // Keyboard users reach the newest buttons and the input without tabbing through every older
  // message's: older buttons stay clickable but leave the tab order.
  function keepTabOrderShort(newest) {
    for (const b of el.log.querySelectorAll('.kb-btn')) {
      if (newest.contains(b)) b.removeAttribute('tabindex');
      else b.setAttribute('tabindex', '-1');
    }
  }

  function addEntry(entry) {
    entry.id = entry.id || uuid();
    entry.ts = entry.ts || Date.now();
    state.log.push(entry);
    const node = entry.who === 'me' ? renderMe(entry) : renderBot(entry);
    el.log.insertBefore(node, typingEl.isConnected ? typingEl : null);
    if (entry.who !== 'me') keepTabOrderShort(node);
    saveLog();
    scrollToBottom();
    return entry;
  }

  const typingEl = (() => {
    const wrap = h('div', 'msg bot typing');
    const bubble = h('div', 'bubble');
    bubble.append(h('span', 'dot'), h('span', 'dot'), h('span', 'dot'));
    wrap.appendChild(bubble);
    return wrap;
  })();

  function setTyping(delta) {
    state.pending = Math.max(0, state.pending + delta);
    if (state.pending && !typingEl.isConnected) {
      el.log.appendChild(typingEl);
      scrollToBottom();
    } else if (!state.pending && typingEl.isConnected) {
      typingEl.remove();
    }
  }

  // ---------------------------------------------------------------- sending
  async function postSend(payload) {
    const res = await fetch(apiUrl('send'), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(payload),
      cache: 'no-store',
    });
    const refused = await refusal(res);
    if (refused) throw refused;
    if (res.status === 400) {
      // Refused for what it says (too long, malformed): a retry cannot help, and the network
      // is fine, so the bubble says why instead of the page saying "offline" for ever.
      const data = await res.json().catch(() => ({}));
      throw new SendRejected(data && data.field === 'text' ? 'text_too_long' : 'bad_request');
    }
    if (!res.ok) throw new Error(`send: HTTP ${res.status}`);
    return res.json();
  }

  class SendRejected extends Error {
    constructor(reason) {
      super(`send rejected: ${reason}`);
      this.reason = reason;
    }
  }

  class PhotoRejected extends Error {
    constructor(reason) {
      super(`photo rejected: ${reason}`);
      this.reason = reason;
    }
  }

  async function uploadPhoto(file) {
    const form = new FormData();
    form.append('photo', file, file.name || 'photo');
    const res = await fetch(apiUrl('photo'), { method: 'POST', body: form, cache: 'no-store' });
    if (res.status === 400 || res.status === 429) {
      const data = await res.json().catch(() => ({}));
      if (data && data.field === 'photo') throw new PhotoRejected(String(data.reason || 'not_image'));
    }
    if (!res.ok) throw new Error(`photo: HTTP ${res.status}`);
    const data = await res.json();
    if (!data || typeof data.ref !== 'string') throw new Error('photo: no ref');
    return data.ref;
  }

  // Sends on behalf of a rider bubble; retries happen via the bubble's mark.
  async function deliver(entry) {
    const m = meta.get(entry);
    if (!m || !m.payload || m.inflight) return;
    m.inflight = true;
    setStatus(entry, 'pending');
    setTyping(+1);
    try {
      // A photo is uploaded first (once, even across retries), then sent by its ref.
      if (m.file && !m.payload.photo) m.payload = { ...m.payload, photo: await uploadPhoto(m.file) };
      const data = await postSend(m.payload);
      setStatus(entry, 'sent');
      saveLog();
      if (bannerKey) hideBanner();
      // Logged out (or the server answered as another identity): this browser's own chat.
      if (data && data.identity_changed) { location.reload(); return; }
      if (checkChat(data && data.chat)) return;
      const replies = Array.isArray(data && data.replies) ? data.replies : [];
      for (const reply of replies) addEntry({ who: 'bot', reply: normalizeReply(reply) });
      maybeSwitchLang(data && data.lang);
    } catch (err) {
      console.warn(err);
      if (err instanceof PhotoRejected || err instanceof SendRejected) {
        m.rejected = err.reason;
        setStatus(entry, 'rejected');
      } else if (err instanceof Refused && err.reason === 'too_many_chats') {
        setStatus(entry, 'failed');
        showBanner('too_many_chats');
      } else {
        setStatus(entry, 'failed');
        showBanner('offline');
      }
    } finally {
      m.inflight = false;
      setTyping(-1);
    }
  }

  function sendAction(payload, me, file) {
    const entry = { who: 'me', text: me.text, icon: me.icon, status: 'pending' };
    meta.set(entry, { payload, file });
    addEntry(entry);
    deliver(entry);
    return entry;
  }

  // ------------------------------------------------------------ long polling
  let autoStart = null;
  async function pollLoop() {
    let backoff = BACKOFF_MIN;
    let quick = true; // first request (and the one after an error) doesn't wait
    for (;;) {
      const wait = quick ? 0 : POLL_WAIT;
      const ctrl = new AbortController();
      const timer = setTimeout(() => ctrl.abort(), (wait + 15) * 1000);
      const started = Date.now();
      if (bannerKey === 'offline') showBanner('connecting', 400);
      try {
        const url = apiUrl('messages', { after: String(state.lastSeq), wait: String(wait) });
        const res = await fetch(url, { cache: 'no-store', signal: ctrl.signal });
        const refused = await refusal(res);
        if (refused) throw refused;
        if (!res.ok) throw new Error(`messages: HTTP ${res.status}`);
        const data = await res.json();
        clearTimeout(timer);
        if (checkChat(data && data.chat)) return;
        if (bannerKey && state.uiLoaded) hideBanner();
        backoff = BACKOFF_MIN;
        quick = false;
        // The automatic /start failed while we were offline: send it again.
        if (autoStart && autoStart.status === 'failed') deliver(autoStart);
        const messages = Array.isArray(data && data.messages) ? data.messages.slice() : [];
        messages.sort((a, b) => Number(a && a.seq) - Number(b && b.seq));
        for (const m of messages) {
          const seq = Number(m && m.seq);
          if (!Number.isFinite(seq) || seq <= state.lastSeq) continue;
          state.lastSeq = seq;
          store.set(seqKey(), String(seq));
          addEntry({ who: 'bot', reply: normalizeReply(m.reply) });
        }
        maybeSwitchLang(data && data.lang);
        // A server that answers an empty long poll at once must not make us spin.
        if (wait && !messages.length && Date.now() - started < 1000) await sleep(1000);
      } catch (err) {
        clearTimeout(timer);
        console.warn(err);
        showBanner(err instanceof Refused && err.reason === 'too_many_chats' ? 'too_many_chats' : 'offline');
        await sleep(backoff);
        backoff = Math.min(backoff * 2, BACKOFF_MAX);
        quick = true;
      }
    }
  }

  // ----------------------------------------------------------------- sheets
  let sheetKind = null;
  let sheetReturnFocus = null;

  function sheetItem(iconName, label, sub, onPick) {
    const li = h('li');
    const b = h('button', 'sheet-item');
    b.type = 'button';
    const ic = h('span', 'sheet-icon');
    ic.appendChild(icon(iconName));
    b.appendChild(ic);
    const body = h('span', 'sheet-body');
    body.appendChild(h('span', 'sheet-label', label));
    if (sub) body.appendChild(h('span', 'sheet-sub', sub));
    b.appendChild(body);
    b.addEventListener('click', () => onPick(b));
    li.appendChild(b);
    return li;
  }

  function renderSheet() {
    const list = el.sheetList;
    list.replaceChildren();
    if (sheetKind === 'location') {
      el.sheetTitle.textContent = t('pick_location');
      if (navigator.geolocation && window.isSecureContext) {
        list.appendChild(sheetItem('crosshair', t('share_location'), '', useRealLocation));
      }
      for (const loc of state.locations) {
        const name = loc.name == null ? '' : String(loc.name);
        list.appendChild(sheetItem('pin', name, `${fmtCoord(loc.lat)}, ${fmtCoord(loc.lon)}`, () => {
          closeSheet();
          sendAction({ location: { lat: Number(loc.lat), lon: Number(loc.lon) } }, { text: name, icon: 'pin' });
        }));
      }
    } else if (sheetKind === 'port') {
      el.sheetTitle.textContent = t('pick_port');
      for (const code of state.ports) {
        list.appendChild(sheetItem('qr', code, '', () => {
          closeSheet();
          sendAction({ text: `/start port_${code}` }, { text: code, icon: 'qr' });
        }));
      }
    } else if (sheetKind === 'login') {
      el.sheetTitle.textContent = t('login_title');
      list.appendChild(loginForm());
    }
  }

  // Staff log in with the password an operator set (or a one-time link from their own chat);
  // the password goes to the server only, never into the transcript.
  function loginForm() {
    const li = h('li', 'login');
    const form = h('form', 'login-form');
    const account = h('input');
    account.type = 'text';
    account.autocomplete = 'username';
    account.spellcheck = false;
    account.required = true;
    account.placeholder = t('login_account');
    account.setAttribute('aria-label', t('login_account'));
    account.value = store.get('staff_account') || '';
    const password = h('input');
    password.type = 'password';
    password.autocomplete = 'current-password';
    password.required = true;
    password.placeholder = t('login_password');
    password.setAttribute('aria-label', t('login_password'));
    const submit = h('button', 'send-btn', t('login_submit'));
    submit.type = 'submit';
    const note = h('div', 'note');
    note.setAttribute('role', 'alert');
    form.append(account, password, submit, note);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (submit.disabled) return;
      submit.disabled = true;
      note.textContent = '';
      try {
        const res = await fetch(apiUrl('login'), {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ staff: account.value.trim(), password: password.value }),
          cache: 'no-store',
        });
        if (res.ok) {
          store.set('staff_account', account.value.trim());
          location.replace('/'); // the chat again, now as the staff member
          return;
        }
        const data = await res.json().catch(() => ({}));
        const reason = data && data.reason;
        note.textContent = t(reason === 'too_many_tries' ? 'login_too_many'
          : reason === 'too_many_chats' ? 'too_many_chats' : 'login_wrong');
      } catch (err) {
        console.warn(err);
        note.textContent = t('offline');
      } finally {
        submit.disabled = false;
        password.value = '';
      }
    });
    li.appendChild(form);
    return li;
  }

  function useRealLocation(button) {
    if (button.classList.contains('busy')) return;
    button.classList.add('busy');
    button.classList.remove('error');
    navigator.geolocation.getCurrentPosition((pos) => {
      button.classList.remove('busy');
      closeSheet();
      const lat = pos.coords.latitude;
      const lon = pos.coords.longitude;
      sendAction({ location: { lat, lon } }, { text: `${fmtCoord(lat.toFixed(5))}, ${fmtCoord(lon.toFixed(5))}`, icon: 'crosshair' });
    }, (err) => {
      console.warn('geolocation', err);
      button.classList.remove('busy');
      button.classList.add('error');
      button.disabled = true;
    }, { enableHighAccuracy: true, timeout: 15000, maximumAge: 60000 });
  }

  function openSheet(kind, opener) {
    sheetKind = kind;
    sheetReturnFocus = opener || null;
    renderSheet();
    el.sheet.hidden = false;
    const first = el.sheetList.querySelector('input, button');
    (first || el.sheetClose).focus({ preventScroll: true });
  }

  function closeSheet() {
    if (!sheetKind) return;
    sheetKind = null;
    el.sheet.hidden = true;
    el.sheetList.replaceChildren();
    if (sheetReturnFocus) sheetReturnFocus.focus({ preventScroll: true });
    sheetReturnFocus = null;
  }

  // ----------------------------------------------------------------- wiring
  function updateSendEnabled() {
    el.sendBtn.disabled = !el.input.value.trim();
  }

  el.composer.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = el.input.value.trim();
    if (!text) return;
    el.input.value = '';
    updateSendEnabled();
    if (!state.staff && /^\/(web)?login$/i.test(text)) {
      openSheet('login', el.input); // a password is never sent as a chat message
      return;
    }
    sendAction({ text }, { text });
    el.input.focus({ preventScroll: true });
  });
  el.input.addEventListener('input', updateSendEnabled);
  el.input.addEventListener('keydown', (ev) => {
    // Enter that confirms an IME composition (Chinese input) must not send.
    if (ev.key === 'Enter' && (ev.isComposing || ev.keyCode === 229)) ev.preventDefault();
  });
  el.locBtn.addEventListener('click', () => openSheet('location', el.locBtn));
  el.qrBtn.addEventListener('click', () => openSheet('port', el.qrBtn));
  el.photoBtn.addEventListener('click', () => el.photoInput.click());
  el.photoInput.addEventListener('change', () => {
    const file = el.photoInput.files && el.photoInput.files[0];
    el.photoInput.value = ''; // choosing the same file again must fire change again
    if (!file) return;
    // Whatever is typed goes with the photo as its caption.
    const caption = el.input.value.trim();
    el.input.value = '';
    updateSendEnabled();
    const payload = caption ? { text: caption } : {};
    sendAction(payload, { text: caption || t('send_photo'), icon: 'camera' }, file);
  });
  el.langBtn.addEventListener('click', () => sendAction({ text: '/language' }, { text: t('language'), icon: 'globe' }));
  el.sheetClose.addEventListener('click', closeSheet);
  el.sheet.addEventListener('click', (ev) => { if (ev.target === el.sheet) closeSheet(); });
  document.addEventListener('keydown', (ev) => { if (ev.key === 'Escape') closeSheet(); });

  // ------------------------------------------------------------------- boot
  async function boot() {
    applyStrings(); // fallback until the catalog arrives (usually instantly)
    try {
      await loadUi(state.lang);
    } catch (err) {
      console.warn(err);
      showBanner('offline');
      loadUiRetrying(state.lang, BACKOFF_MIN); // keeps trying in the background
    }

    // Whose transcript is known now (/ui named this identity, or the last one we saw).
    state.lastSeq = Number(store.get(seqKey())) || 0;
    const history = loadLog();
    state.log = [];
    for (const entry of history) {
      delete entry.status;
      state.log.push(entry);
      el.log.appendChild(entry.who === 'me' ? renderMe(entry) : renderBot(entry));
    }
    scrollToBottom();

    state.booted = true;
    pollLoop();
    if (!history.length) autoStart = sendAction({ text: '/start' }, { text: '/start' });
    if (pageParams.has('login') && !state.staff) openSheet('login');
  }

  boot();
})();
