// Meridian live view. Hand-written, no framework, no build step.
//
// Flow: read the admin token (URL fragment #token=… or sessionStorage; none on a loopback
// listener) → fetch /v1/events with it in the Authorization header (EventSource cannot send one)
// → parse the Server-Sent Events by hand → each frame: derive per-second rates from the
// cumulative counters of the chosen Gateway, append to a ring buffer, redraw. The stream ends
// now and then (the server bounds its life); we reconnect with a capped backoff.
//
// Memory stays bounded: the ring buffer holds MAX_SAMPLES samples, the server sends at most a few
// drills, and every redraw replaces the sections' contents.
'use strict';
(() => {
  const MAX_SAMPLES = 300; // 5 minutes at one frame a second
  const MAX_BUFFER = 4 << 20; // an event larger than this is a broken stream: reconnect
  const STALE_MS = 2500; // no frame for this long: the counters did not move (rate 0)
  // Dark enough for text on white (WCAG AA); each region also carries its name in text.
  const COLORS = ['#1d4ed8', '#047857', '#b45309', '#6d28d9', '#0e7490', '#475569'];
  const FAILED = '#b91c1c';
  const TOKEN_KEY = 'meridian-admin-token';

  const st = {
    token: null,
    frame: null,
    gateway: '',
    prev: null, // {at, requests, failed, byRegion}
    samples: [], // {at, total, failed, byRegion: {region: req/s}}
    series: {}, // finished drills' samples from the controller, by drill (see drillSeries)
    lastFrameAt: 0,
    regions: [],
    confirm: null,
    message: '',
  };

  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) =>
    ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
  const color = (region) => {
    const i = st.regions.indexOf(region);
    return COLORS[(i < 0 ? st.regions.length : i) % COLORS.length];
  };
  const fmt = (n, d = 1) => (Number.isFinite(n) ? n.toFixed(d) : '–');
  const swatch = (c) => `<svg class="swatch" width="12" height="12" aria-hidden="true"><rect width="12" height="12" fill="${c}"/></svg>`;
  const tag = (ok, yes, no, warn) => ok
    ? `<span class="tag ok">✔ ${esc(yes)}</span>`
    : `<span class="tag ${warn ? 'warn' : 'bad'}">${warn ? '!' : '✖'} ${esc(no)}</span>`;

  // ---- token -------------------------------------------------------------------------------
  function readToken() {
    const m = location.hash.match(/(?:^#|&)token=([^&]+)/);
    if (m) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
      // Out of the address bar and the history.
      history.replaceState(null, '', location.pathname + location.search);
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }
  function headers() {
    return st.token ? { Authorization: `Bearer ${st.token}` } : {};
  }
  function askToken(why) {
    $('login').hidden = false;
    $('main').hidden = true;
    $('login-error').textContent = why || '';
    setConn(false, 'needs the admin token');
  }
  $('login').addEventListener('submit', (e) => {
    e.preventDefault();
    st.token = $('token').value.trim();
    sessionStorage.setItem(TOKEN_KEY, st.token);
    $('login').hidden = true;
    $('main').hidden = false;
    connect();
  });

  // ---- stream ------------------------------------------------------------------------------
  function setConn(ok, text) {
    const c = $('conn');
    c.className = `conn ${ok ? 'ok' : 'bad'}`;
    c.textContent = text;
  }
  let backoff = 1000;
  let running = false;
  async function connect() {
    if (running) return;
    running = true;
    try {
      const resp = await fetch('/v1/events', { headers: headers(), cache: 'no-store' });
      if (resp.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        st.token = null;
        askToken((await errorOf(resp)) || 'wrong or missing token');
        return;
      }
      if (!resp.ok || !resp.body) {
        throw new Error(`${resp.status}: ${await errorOf(resp)}`);
      }
      setConn(true, 'live');
      backoff = 1000;
      await read(resp.body.getReader());
      setConn(false, 'reconnecting…');
    } catch (e) {
      setConn(false, `disconnected (${e.message}); retrying in ${Math.round(backoff / 1000)} s`);
      backoff = Math.min(backoff * 2, 30000);
    } finally {
      running = false;
    }
    if ($('login').hidden) setTimeout(connect, backoff);
  }
  async function errorOf(resp) {
    try { return (await resp.json()).error; } catch { return resp.statusText; }
  }
  async function read(reader) {
    const decoder = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true });
      if (buf.length > MAX_BUFFER) { reader.cancel(); throw new Error('event too large'); }
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        let data = '';
        for (const line of block.split('\n')) {
          if (line.startsWith('data:')) data += line.slice(5).trimStart();
        }
        if (data) onFrame(JSON.parse(data));
      }
    }
  }

  // ---- data --------------------------------------------------------------------------------
  function counters(frame, gw) {
    const c = { requests: 0, failed: 0, byRegion: {}, byZone: {}, clusters: [] };
    for (const t of frame.traffic) {
      if (`${t.namespace}/${t.name}` !== gw) continue;
      c.requests += t.requests;
      c.failed += t.failed;
      c.clusters.push(t);
      for (const [r, n] of Object.entries(t.byRegion)) c.byRegion[r] = (c.byRegion[r] || 0) + n;
      for (const [z, n] of Object.entries(t.byZone || {})) c.byZone[z] = (c.byZone[z] || 0) + n;
    }
    return c;
  }
  function sample(now, cur) {
    const p = st.prev;
    st.prev = { at: now, ...cur };
    if (!p) return;
    const dt = (now - p.at) / 1000;
    if (dt <= 0) return;
    // A proxy restart resets its counters: a negative delta counts as nothing.
    const rate = (a, b) => Math.max(0, (a - b) / dt);
    const s = { at: now, total: rate(cur.requests, p.requests), failed: rate(cur.failed, p.failed), byRegion: {}, byZone: {} };
    for (const r of new Set([...Object.keys(cur.byRegion), ...Object.keys(p.byRegion)])) {
      s.byRegion[r] = rate(cur.byRegion[r] || 0, p.byRegion[r] || 0);
    }
    // Zones keep only the latest rates (the chart stacks regions): no history per zone.
    for (const z of Object.keys(cur.byZone)) {
      s.byZone[z] = rate(cur.byZone[z] || 0, p.byZone[z] || 0);
    }
    st.samples.push(s);
    while (st.samples.length > MAX_SAMPLES) st.samples.shift();
  }
  function onFrame(f) {
    st.frame = f;
    st.lastFrameAt = Date.now();
    st.regions = [...new Set(f.status.clusters.map((c) => c.region))].sort();
    const gws = gatewayNames(f);
    if (!gws.includes(st.gateway)) {
      st.gateway = gws[0] || '';
      st.prev = null;
      st.samples = [];
    }
    sample(st.lastFrameAt, counters(f, st.gateway));
    render();
  }
  // No frame means nothing changed, counters included: the rate is zero.
  setInterval(() => {
    if (!st.frame || Date.now() - st.lastFrameAt < STALE_MS) return;
    st.lastFrameAt = Date.now();
    sample(st.lastFrameAt, counters(st.frame, st.gateway));
    render();
  }, 1000);
  function gatewayNames(f) {
    return [...new Set(f.status.gateways.map((g) => `${g.namespace}/${g.name}`))].sort();
  }
  $('gateway').addEventListener('change', (e) => {
    st.gateway = e.target.value;
    st.prev = null;
    st.samples = [];
    if (st.frame) { sample(Date.now(), counters(st.frame, st.gateway)); render(); }
  });

  // ---- render ------------------------------------------------------------------------------
  function render() {
    const f = st.frame;
    const at = new Date(f.status.generatedAt);
    setConn(true, `live · updated ${at.toLocaleTimeString()}`);
    renderRegions(f);
    renderGatewaySelect(f);
    renderTraffic();
    renderBackends(f);
    renderDrills(f);
  }

  function renderRegions(f) {
    const html = f.status.clusters.map((c) => {
      const proxies = f.status.proxies.filter((p) => p.cluster === c.name);
      const connected = proxies.filter((p) => p.connected);
      const current = connected.filter((p) => p.ackedGeneration != null && p.ackedGeneration >= (p.currentGeneration ?? 0));
      const gws = f.status.gateways.filter((g) => g.cluster === c.name);
      const gwList = gws.map((g) => {
        const ok = g.programmed?.status === 'True';
        const why = g.programmed ? `${g.programmed.reason}` : 'no status yet';
        return `<li data-gateway="${esc(`${g.namespace}/${g.name}`)}" data-programmed="${ok}">${esc(g.namespace)}/${esc(g.name)} ${tag(ok, 'Programmed', `not Programmed (${why})`)}</li>`;
      }).join('');
      return `<div class="card ${c.reachable ? 'ok' : 'bad'}" data-cluster="${esc(c.name)}">
        <h3>${swatch(color(c.region))}<span data-region="${esc(c.region)}">${esc(c.region)}</span> · cluster ${esc(c.name)}</h3>
        <div>${tag(c.reachable, 'reachable', c.unreachableSince ? `unreachable since ${c.unreachableSince}` : 'unreachable')}
        ${c.synced ? '' : '<span class="tag warn">! syncing</span>'}</div>
        <div>zones: ${esc(c.zones.join(', ') || '–')}</div>
        <div>proxies: ${connected.length} connected of ${proxies.length}, ${current.length} up to date</div>
        <div>Gateways: ${gws.filter((g) => g.programmed?.status === 'True').length} of ${gws.length} Programmed</div>
        <ul>${gwList}</ul>
      </div>`;
    }).join('');
    $('regions').innerHTML = html || '<p>No member clusters yet.</p>';
  }

  function renderGatewaySelect(f) {
    const sel = $('gateway');
    const names = gatewayNames(f);
    if ([...sel.options].map((o) => o.value).join() !== names.join()) {
      sel.innerHTML = names.map((n) => `<option>${esc(n)}</option>`).join('');
    }
    sel.value = st.gateway;
  }

  function renderTraffic() {
    const s = st.samples[st.samples.length - 1];
    const f = st.frame;
    if (!s) {
      $('traffic').innerHTML = '<p class="hint">Measuring (rates need two frames)…</p>';
      $('chart').innerHTML = '';
      return;
    }
    const regions = [...new Set([...st.regions, ...Object.keys(s.byRegion)])].sort();
    const served = regions.reduce((a, r) => a + (s.byRegion[r] || 0), 0);
    const rows = regions.map((r) => {
      const v = s.byRegion[r] || 0;
      const share = served > 0 ? (100 * v) / served : 0;
      // The region's zones that answered in the last interval, under it.
      const zones = Object.keys(s.byZone || {}).filter((k) => k.startsWith(`${r}/`) && s.byZone[k] > 0).sort();
      const zoneRows = zones.map((k) => {
        const zv = s.byZone[k];
        const zshare = served > 0 ? (100 * zv) / served : 0;
        const zone = k.slice(r.length + 1);
        return `<tr class="zone" data-serving-zone="${esc(zone)}"><td>zone ${esc(zone)}</td>
          <td class="num">${fmt(zv)}</td><td class="num">${fmt(zshare, 0)} %</td>
          <td><svg width="200" height="8" aria-hidden="true"><rect width="${(2 * zshare).toFixed(1)}" height="8" fill="${color(r)}" fill-opacity="0.6"/></svg></td></tr>`;
      }).join('');
      return `<tr data-serving-region="${esc(r)}"><td>${swatch(color(r))}${esc(r)}</td>
        <td class="num">${fmt(v)}</td><td class="num" id="share-${esc(r)}">${fmt(share, 0)} %</td>
        <td><svg width="200" height="12" aria-hidden="true"><rect width="${(2 * share).toFixed(1)}" height="12" fill="${color(r)}"/></svg></td></tr>${zoneRows}`;
    }).join('');
    const errPct = s.total > 0 ? (100 * s.failed) / s.total : 0;
    const byCluster = counters(f, st.gateway).clusters.map((t) => {
      const zones = f.status.proxies.filter((p) => p.cluster === t.cluster && p.connected).map((p) => p.zone);
      return `${esc(t.cluster)} (zones ${esc([...new Set(zones)].join(', ') || '–')}): ${t.requests} requests, ${t.failed} failed since start`;
    }).join('<br>');
    $('traffic').innerHTML = `<table><thead><tr><th>serving region / zone</th><th>req/s</th><th>share</th><th></th></tr></thead><tbody>${rows}</tbody></table>
      <p>total <strong id="rate-total">${fmt(s.total)}</strong> req/s ·
      errors <strong id="rate-errors" class="${s.failed > 0 ? 'bad' : ''}">${fmt(s.failed)}</strong>/s (${fmt(errPct)} %)</p>
      <p class="hint">Received by the proxies of: ${byCluster || '–'}</p>`;
    $('chart').innerHTML = chart(st.samples, markers(f), `Requests per second to ${st.gateway} by serving region`);
  }

  // Fail/restore moments of the drills, as epoch ms.
  function markers(f) {
    const out = [];
    for (const d of f.drills) {
      const s = d.status || {};
      if (s.failTime) out.push({ at: Date.parse(s.failTime), label: `${d.name}: ${targetOf(d)} failed`, kind: 'fail' });
      if (s.restoreTime) out.push({ at: Date.parse(s.restoreTime), label: `${d.name}: restored`, kind: 'restore' });
    }
    return out;
  }

  // Stacked areas of req/s per serving region, failures on top in red, markers as lines.
  function chart(samples, marks, title) {
    if (samples.length < 2) return '';
    const W = 900, H = 240, L = 48, R = 140, T = 16, B = 28;
    const t0 = samples[0].at, t1 = samples[samples.length - 1].at;
    const span = Math.max(1, t1 - t0);
    const max = Math.max(1, ...samples.map((s) => s.total));
    const x = (t) => L + ((t - t0) / span) * (W - L - R);
    const y = (v) => H - B - (v / max) * (H - T - B);
    const layers = [...st.regions.filter((r) => samples.some((s) => s.byRegion[r])), 'failed'];
    let base = samples.map(() => 0);
    let paths = '';
    for (const r of layers) {
      const vals = samples.map((s) => (r === 'failed' ? s.failed : s.byRegion[r] || 0));
      const top = base.map((b, i) => b + vals[i]);
      const up = samples.map((s, i) => `${x(s.at).toFixed(1)},${y(top[i]).toFixed(1)}`);
      const down = samples.map((s, i) => `${x(s.at).toFixed(1)},${y(base[i]).toFixed(1)}`).reverse();
      paths += `<polygon points="${up.concat(down).join(' ')}" fill="${r === 'failed' ? FAILED : color(r)}" fill-opacity="0.85"><title>${esc(r)}</title></polygon>`;
      base = top;
    }
    const legend = layers.map((r, i) => `<rect x="${W - R + 10}" y="${T + i * 18}" width="12" height="12" fill="${r === 'failed' ? FAILED : color(r)}"/><text x="${W - R + 28}" y="${T + i * 18 + 11}">${esc(r === 'failed' ? 'failed' : r)}</text>`).join('');
    const lines = marks.filter((m) => m.at >= t0 && m.at <= t1).map((m) => `<g class="marker-${m.kind}"><line x1="${x(m.at).toFixed(1)}" x2="${x(m.at).toFixed(1)}" y1="${T}" y2="${H - B}" stroke="${m.kind === 'fail' ? FAILED : '#111827'}" stroke-width="2" stroke-dasharray="${m.kind === 'fail' ? '' : '5 3'}"/><text x="${(x(m.at) + 4).toFixed(1)}" y="${T + 10}">${esc(m.kind === 'fail' ? 'fail' : 'restore')}</text><title>${esc(m.label)}</title></g>`).join('');
    const axis = `<line x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}" stroke="#6b7280"/>
      <text x="4" y="${T + 10}">${fmt(max, 0)}/s</text><text x="4" y="${H - B}">0</text>
      <text x="${L}" y="${H - 8}">${esc(new Date(t0).toLocaleTimeString())}</text>
      <text x="${W - R}" y="${H - 8}" text-anchor="end">${esc(new Date(t1).toLocaleTimeString())}</text>`;
    return `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}" font-size="12" font-family="system-ui, sans-serif"><title>${esc(title)}</title>${paths}${axis}${lines}${legend}</svg>`;
  }

  function renderBackends(f) {
    const html = f.status.backends.map((cb) => cb.backends.map((b) => {
      const tiers = b.tiers.map((t) => `<tr><td>${esc(t.region)}/${esc(t.zone || '–')} (${esc(t.cluster)})</td>
        <td>${t.tier == null ? '<span class="tag bad">✖ no endpoint (503)</span>' : `tier ${t.tier} · ${esc(t.kind)}`}</td>
        <td>${t.servingRegion ? `${swatch(color(t.servingRegion))}${esc(t.servingRegion)}` : '–'}</td></tr>`).join('');
      const zones = b.zones.map((z) => {
        const flags = [z.drained ? `<span class="tag warn">! ${z.drained} drained</span>` : '',
          z.ejected ? `<span class="tag bad">✖ ${z.ejected} ejected</span>` : ''].join(' ');
        return `<li>${esc(z.region)}/${esc(z.zone || '–')}: ${z.healthy} of ${z.endpoints} healthy ${flags}</li>`;
      }).join('');
      const ejected = b.ejected.map((e) => `<li>${esc(e.address)} (${esc(e.region)}/${esc(e.zone)}) by ${e.by.map((x) => `${esc(x.proxy)}: ${esc(x.reason)}`).join(', ')}</li>`).join('');
      return `<h3>${esc(b.name)} <span class="hint">in cluster ${esc(cb.cluster)}</span></h3>
        ${b.invalid ? `<p class="bad">invalid: ${esc(b.invalid)}</p>` : ''}
        <table><thead><tr><th>proxies in</th><th>tier in use</th><th>serving region</th></tr></thead><tbody>${tiers}</tbody></table>
        <ul>${zones}</ul>${ejected ? `<p>Ejected by proxies:</p><ul>${ejected}</ul>` : ''}`;
    }).join('')).join('');
    $('backends').innerHTML = html || '<p>No backends published yet.</p>';
  }

  function targetOf(d) {
    const t = d.target || {};
    return ['cluster', 'region', 'zone'].filter((k) => t[k]).map((k) => `${k} ${t[k]}`).join(', ');
  }

  function renderDrills(f) {
    renderDrillStart(f);
    // Forget the series of drills that are gone (the page may stay open for days).
    const live = new Set(f.drills.map((d) => `${d.cluster}/${d.namespace}/${d.name}/${(d.status || {}).startTime || d.created}`));
    for (const k of Object.keys(st.series)) if (!live.has(k)) delete st.series[k];
    const html = f.drills.map((d) => {
      const s = d.status || {};
      const phase = s.phase || 'Pending';
      const running = phase === 'Running' || phase === 'Pending';
      const ok = phase === 'Succeeded';
      const phaseTag = running ? `<span class="tag warn">● ${esc(phase)}</span>` : tag(ok, phase, phase);
      const start = Date.parse(s.startTime || d.created);
      const end = s.completionTime ? Date.parse(s.completionTime) : Date.now();
      const during = st.samples.filter((x) => x.at >= start - 5000 && x.at <= end + 5000);
      const title = `Drill ${d.name}: requests per second by serving region`;
      const kept = running ? null : drillSeries(d);
      let pic;
      if (during.length >= 2 && (!kept || kept.length < during.length)) pic = chart(during, markers({ drills: [d] }), title);
      else if (kept && kept.length >= 2) pic = chart(kept, markers({ drills: [d] }), title);
      else pic = timeline(d);
      const fig = s.figures;
      const figures = fig ? figuresTable(fig) : '';
      const steps = (s.timeline || []).map((e) => `<li><time>${esc(e.time)}</time> <strong>${esc(e.type)}</strong> ${esc(e.message)}</li>`).join('');
      return `<div class="drill" data-drill="${esc(d.name)}" data-phase="${esc(phase)}">
        <h3>${esc(d.namespace)}/${esc(d.name)} ${phaseTag}</h3>
        <p>fail ${esc(targetOf(d))} · mode ${esc(d.mode)} · ${esc(d.duration || '30s')} · in cluster ${esc(d.cluster)}
        ${s.abortReason ? `<br><span class="bad">aborted: ${esc(s.abortReason)}</span>` : ''}
        ${s.message ? `<br>${esc(s.message)}` : ''}</p>
        ${pic}${figures}<details><summary>timeline</summary><ol>${steps}</ol></details></div>`;
    }).join('');
    $('drills').innerHTML = html || '<p>No drills yet.</p>';
  }

  // A finished drill's traffic as the controller sampled it (GET /v1/drills/series), fetched
  // once per drill and kept: rates between consecutive cumulative points, like the live ones.
  // null while unknown; an empty list when the controller has none (then the moments only).
  function drillSeries(d) {
    const key = `${d.cluster}/${d.namespace}/${d.name}/${(d.status || {}).startTime || d.created}`;
    if (key in st.series) return st.series[key];
    st.series[key] = null;
    const q = new URLSearchParams({ cluster: d.cluster, namespace: d.namespace, name: d.name });
    fetch(`/v1/drills/series?${q}`, { headers: headers() })
      .then((r) => (r.ok ? r.json() : { points: [] }))
      .then((v) => {
        const pts = v.points || [];
        const out = [];
        for (let i = 1; i < pts.length; i++) {
          const a = pts[i - 1], b = pts[i];
          const dt = (b.atMs - a.atMs) / 1000;
          if (dt <= 0) continue;
          const rate = (x, y) => Math.max(0, (x - y) / dt);
          const byRegion = {};
          for (const r of Object.keys(b.byRegion || {})) byRegion[r] = rate(b.byRegion[r], (a.byRegion || {})[r] || 0);
          out.push({ at: b.atMs, total: rate(b.requests, a.requests), failed: rate(b.failed, a.failed), byRegion });
        }
        st.series[key] = out;
        if (st.frame) render();
      })
      .catch(() => { st.series[key] = []; });
    return null;
  }

  // Without samples (the page was not open then, the controller kept none): the drill's moments.
  function timeline(d) {
    const s = d.status || {};
    const entries = (s.timeline || []).map((e) => ({ at: Date.parse(e.time), type: e.type }));
    if (entries.length < 2) return '';
    const W = 900, H = 70, L = 10, R = 10;
    const t0 = entries[0].at, t1 = Math.max(t0 + 1, entries[entries.length - 1].at);
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const failed = s.failTime ? `<rect x="${x(Date.parse(s.failTime)).toFixed(1)}" y="20" width="${Math.max(1, x(Date.parse(s.restoreTime || new Date(t1).toISOString())) - x(Date.parse(s.failTime))).toFixed(1)}" height="20" fill="${FAILED}" fill-opacity="0.25"><title>target failed</title></rect>` : '';
    const marks = entries.map((e, i) => `<line x1="${x(e.at).toFixed(1)}" x2="${x(e.at).toFixed(1)}" y1="15" y2="45" stroke="#111827"/><text x="${x(e.at).toFixed(1)}" y="${i % 2 ? 62 : 12}" text-anchor="middle">${esc(e.type)}</text>`).join('');
    return `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="Drill ${esc(d.name)} timeline" font-size="11" font-family="system-ui, sans-serif">${failed}<line x1="${L}" x2="${W - R}" y1="30" y2="30" stroke="#6b7280"/>${marks}</svg>`;
  }

  function figuresTable(fig) {
    const regions = [...new Set([...Object.keys(fig.shareBefore || {}), ...Object.keys(fig.shareDuring || {}), ...Object.keys(fig.shareAfter || {})])].sort();
    const share = (m) => regions.map((r) => `${esc(r)} ${fmt((m || {})[r] ?? 0, 0)} %`).join(', ');
    const ms = (v) => (v == null ? '–' : `${fmt(v, 0)} ms`);
    return `<table><thead><tr><th></th><th>requests</th><th>failed</th><th>p99</th><th>share by serving region</th></tr></thead><tbody>
      <tr><td>before</td><td class="num">${fig.requestsBefore}</td><td class="num">${fig.failedBefore}</td><td class="num">${ms(fig.p99MsBefore)}</td><td>${share(fig.shareBefore)}</td></tr>
      <tr><td>during</td><td class="num">${fig.requestsDuring}</td><td class="num">${fig.failedDuring}</td><td class="num">${ms(fig.p99MsDuring)}</td><td>${share(fig.shareDuring)}</td></tr>
      <tr><td>after</td><td class="num">${fig.requestsAfter}</td><td class="num">${fig.failedAfter}</td><td class="num">${ms(fig.p99MsAfter)}</td><td>${share(fig.shareAfter)}</td></tr>
      </tbody></table>`;
  }

  // ---- starting a drill (token listeners only, after a confirmation) ------------------------
  function renderDrillStart(f) {
    const box = $('drill-start');
    if (!f.canStartDrills) {
      box.innerHTML = `<p class="hint" id="read-only">${esc(f.readOnlyReason)}</p>`;
      return;
    }
    if (st.confirm) {
      const c = st.confirm;
      if (!box.querySelector('.confirm')) {
        box.innerHTML = `<div class="confirm" role="alertdialog" aria-labelledby="confirm-text">
          <p id="confirm-text">Fail <strong>region ${esc(c.target.region)}</strong> (${esc(c.mode)}) for ${esc(c.duration)}
          for Gateway ${esc(c.namespace)}/${esc(c.gateway)}? Its traffic moves to the other regions; the drill
          rolls back by itself.</p>
          <button type="button" class="danger" id="confirm-yes">Yes, fail ${esc(c.target.region)}</button>
          <button type="button" id="confirm-no">Cancel</button></div>`;
        $('confirm-yes').addEventListener('click', startDrill);
        $('confirm-no').addEventListener('click', () => { st.confirm = null; box.innerHTML = ''; renderDrillStart(st.frame); });
      }
      return;
    }
    if (box.querySelector('form')) {
      $('drill-msg').textContent = st.message;
      return;
    }
    box.innerHTML = `<form id="drill-form"><label>Region <select id="drill-region">${st.regions.map((r) => `<option>${esc(r)}</option>`).join('')}</select></label>
      <label>Mode <select id="drill-mode"><option>drain</option><option>kill</option><option>blackhole</option></select></label>
      <label>Duration <input id="drill-duration" value="20s" size="5"></label>
      <button type="submit">Start drill…</button> <span id="drill-msg" role="status">${esc(st.message)}</span></form>`;
    $('drill-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const [namespace, gateway] = st.gateway.split('/');
      const cluster = st.frame.status.gateways.find((g) => `${g.namespace}/${g.name}` === st.gateway)?.cluster;
      st.confirm = {
        cluster, namespace, gateway,
        target: { region: $('drill-region').value },
        mode: $('drill-mode').value,
        duration: $('drill-duration').value.trim(),
      };
      box.innerHTML = '';
      renderDrillStart(st.frame);
    });
  }
  async function startDrill() {
    const body = JSON.stringify(st.confirm);
    st.confirm = null;
    $('drill-start').innerHTML = '';
    try {
      const resp = await fetch('/v1/drills', {
        method: 'POST',
        headers: { ...headers(), 'Content-Type': 'application/json' },
        body,
      });
      const j = await resp.json();
      st.message = resp.ok ? `started ${j.namespace}/${j.name} in ${j.cluster}` : `refused: ${j.error}`;
    } catch (e) {
      st.message = `failed: ${e.message}`;
    }
    renderDrillStart(st.frame);
  }

  st.token = readToken();
  connect();
})();
