// engarde dashboard: one EventSource, no polling, no framework.
//
// The server pushes a "snapshot" event when the page connects (status + traffic history) and an
// "update" event every second and after each exclusion (status + the newest history sample).
// Commands go through the original's JSON API (api/v1/exclude, api/v1/include).
"use strict";

(() => {
  const STALE_MS = 5000; // no event for this long: the connection is presumed lost
  const RECONNECT_MS = 3000; // after the server refused the stream (EventSource gives up)

  const $ = (id) => document.getElementById(id);
  const state = {
    status: null,
    samples: [],
    capacity: 300,
    period: 1,
    lastEventAt: 0,
    connected: false,
    everConnected: false,
    source: null,
    cards: new Map(),
    pending: new Set(),
  };

  // ---- formatting ------------------------------------------------------------------------

  function fmtRate(bytesPerSecond) {
    const bits = (bytesPerSecond || 0) * 8;
    if (bits < 1000) return `${Math.round(bits)} bit/s`;
    if (bits < 1e6) return `${(bits / 1e3).toFixed(bits < 1e4 ? 1 : 0)} kbit/s`;
    if (bits < 1e9) return `${(bits / 1e6).toFixed(bits < 1e7 ? 2 : 1)} Mbit/s`;
    return `${(bits / 1e9).toFixed(2)} Gbit/s`;
  }

  function fmtAge(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    if (seconds < 10) return `${seconds.toFixed(1)} s ago`;
    return `${fmtDuration(seconds)} ago`;
  }

  function fmtDuration(seconds) {
    const s = Math.floor(seconds);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function fmtCount(n) {
    return (n || 0).toLocaleString("en-US");
  }

  function fmtBytes(n) {
    n = n || 0;
    if (n < 1024) return `${n} B`;
    const units = ["KiB", "MiB", "GiB", "TiB"];
    let value = n / 1024;
    let i = 0;
    while (value >= 1024 && i < units.length - 1) {
      value /= 1024;
      i += 1;
    }
    return `${value.toFixed(value < 10 ? 1 : 0)} ${units[i]}`;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  // ---- connection --------------------------------------------------------------------------

  function connect() {
    if (state.source) state.source.close();
    const source = new EventSource("api/v2/events");
    state.source = source;
    source.addEventListener("snapshot", (event) => {
      const data = JSON.parse(event.data);
      state.samples = data.history.samples;
      state.capacity = data.history.capacity;
      state.period = data.history.periodSeconds;
      received(data.status);
    });
    source.addEventListener("update", (event) => {
      const data = JSON.parse(event.data);
      if (data.sample) {
        state.samples.push(data.sample);
        if (state.samples.length > state.capacity) {
          state.samples.splice(0, state.samples.length - state.capacity);
        }
      }
      received(data.status);
    });
    source.addEventListener("error", () => {
      setConnected(false, "Connection to engarde lost. Reconnecting…");
      if (source.readyState === EventSource.CLOSED) {
        // The server answered but refused the stream (restarting, auth, too many pages).
        setTimeout(() => {
          if (state.source === source) connect();
        }, RECONNECT_MS);
      }
    });
  }

  function received(status) {
    state.lastEventAt = Date.now();
    setConnected(true);
    state.status = status;
    render();
  }

  function setConnected(ok, why) {
    state.connected = ok;
    if (ok) state.everConnected = true;
    const conn = $("conn");
    conn.className = `conn ${ok ? "conn-ok" : "conn-lost"}`;
    setText(conn, ok ? "live" : "offline");
    const banner = $("banner");
    document.body.classList.toggle("stale", !ok && state.everConnected);
    if (ok) {
      banner.hidden = true;
      return;
    }
    let text = why || "Connection to engarde lost. Reconnecting…";
    if (state.lastEventAt) {
      text += ` Values shown are from ${new Date(state.lastEventAt).toLocaleTimeString()}.`;
    }
    setText(banner, text);
    banner.hidden = false;
  }

  function watchdog() {
    if (state.connected && Date.now() - state.lastEventAt > STALE_MS) {
      const silent = Math.round((Date.now() - state.lastEventAt) / 1000);
      setConnected(false, `No news from engarde for ${silent} s. Reconnecting…`);
      connect();
    }
  }

  let noticeTimer = 0;
  function notice(text, isError) {
    const node = $("notice");
    node.className = `notice${isError ? " notice-error" : ""}`;
    setText(node, text);
    node.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => {
      node.hidden = true;
    }, 8000);
  }

  // ---- rendering ------------------------------------------------------------------------------

  function render() {
    const s = state.status;
    document.body.dataset.role = s.type;
    setText($("role"), s.type);
    setText($("description"), s.description || "");
    setText($("version"), s.version);
    document.title = `engarde ${s.type}${s.description ? ` · ${s.description}` : ""}`;
    renderSummary(s);
    const items = s.type === "client" ? s.links : s.clients;
    const keyOf = s.type === "client" ? (l) => l.name : (c) => c.address;
    const seen = new Set();
    const main = $("items");
    items.forEach((item, position) => {
      const key = keyOf(item);
      seen.add(key);
      let card = state.cards.get(key);
      if (!card) {
        card = s.type === "client" ? clientCard(key) : serverCard(key);
        state.cards.set(key, card);
      }
      if (main.children[position] !== card.root) main.insertBefore(card.root, main.children[position] || null);
      if (s.type === "client") updateClientCard(card, item);
      else updateServerCard(card, item);
      drawSpark(card, key);
    });
    for (const [key, card] of state.cards) {
      if (!seen.has(key)) {
        card.root.remove();
        state.cards.delete(key);
      }
    }
    const empty = $("empty");
    empty.hidden = items.length > 0;
    if (!items.length) {
      setText(empty, s.type === "client"
        ? "No network interfaces reported yet."
        : "No client has sent anything yet.");
    } else if (s.clientsOmitted) {
      empty.hidden = false;
      setText(empty, `${s.clientsOmitted} less recent client addresses not shown (see api/v2/status).`);
    }
  }

  function fact(list, term, cls) {
    const row = el("div", `fact${cls ? ` ${cls}` : ""}`);
    row.append(el("dt", "", term));
    const value = el("dd");
    row.append(value);
    list.append(row);
    return value;
  }

  function summaryItem(parent, term, value, cls) {
    const item = el("div", `sum${cls ? ` ${cls}` : ""}`);
    item.append(el("span", "sum-term", term), el("span", "sum-value", value));
    parent.append(item);
  }

  function renderSummary(s) {
    const box = $("summary");
    box.replaceChildren();
    const c = s.counters;
    if (s.type === "client") {
      const usable = s.links.filter((l) => !l.excluded).length;
      const tone = s.activeLinks === 0 ? "bad" : s.activeLinks < usable ? "warn" : "good";
      summaryItem(box, "active links", `${s.activeLinks} of ${s.links.length}`, tone);
      const tx = s.links.reduce((a, l) => a + l.tx.bytesPerSecond, 0);
      const rx = s.links.reduce((a, l) => a + l.rx.bytesPerSecond, 0);
      summaryItem(box, "sent / received", `${fmtRate(tx)} / ${fmtRate(rx)}`);
      summaryItem(box, "WireGuard peer", s.wireguardPeer || "none yet");
      summaryItem(box, "server", s.dstAddress);
      if (c.no_uplink_drops) summaryItem(box, "dropped, no link", fmtCount(c.no_uplink_drops), "warn");
    } else {
      summaryItem(box, "clients alive", `${s.clientsAlive} of ${s.clients.length}`, s.clientsAlive ? "good" : "warn");
      if (s.clientsPending) summaryItem(box, "pending", fmtCount(s.clientsPending));
      if (c.junk_datagrams) summaryItem(box, "junk dropped", fmtCount(c.junk_datagrams), "warn");
      const tx = s.clients.reduce((a, l) => a + l.tx.bytesPerSecond, 0);
      const rx = s.clients.reduce((a, l) => a + l.rx.bytesPerSecond, 0);
      summaryItem(box, "from / to clients", `${fmtRate(rx)} / ${fmtRate(tx)}`);
      summaryItem(box, "WireGuard", s.dstAddress);
      summaryItem(box, "listening", s.listenAddress);
    }
    const wgDrops = (c.wg_tx_dropped_full || 0) + (c.wg_tx_errors || 0);
    if (wgDrops) summaryItem(box, "not delivered to WireGuard", fmtCount(wgDrops), "warn");
    summaryItem(box, "running for", fmtDuration(s.uptime));
  }

  function cardSkeleton(key) {
    const root = el("article", "card");
    root.dataset.key = key;
    const head = el("div", "card-head");
    const ident = el("div", "ident");
    const name = el("span", "name", key);
    const label = el("span", "label");
    ident.append(name, label);
    const pill = el("span", "pill status");
    head.append(ident, pill);
    const reason = el("div", "reason");
    const facts = el("dl", "facts");
    const spark = el("canvas", "spark");
    spark.setAttribute("role", "img");
    const legend = el("div", "legend");
    const lgTx = el("span", "lg lg-tx");
    const lgRx = el("span", "lg lg-rx");
    const peak = el("span", "peak");
    legend.append(lgTx, lgRx, peak);
    root.append(head, reason, facts, spark, legend);
    return { root, name, label, pill, reason, facts, spark, lgTx, lgRx, peak };
  }

  function clientCard(key) {
    const card = cardSkeleton(key);
    card.route = fact(card.facts, "from → to", "wide");
    card.last = fact(card.facts, "last heard");
    card.since = fact(card.facts, "in this state");
    card.drops = fact(card.facts, "drops");
    card.lgTx.textContent = "sent";
    card.lgRx.textContent = "received";
    card.button = el("button", "action");
    card.button.type = "button";
    card.button.addEventListener("click", () => act(key, card.button.dataset.action, card.button));
    card.root.append(card.button);
    return card;
  }

  function updateClientCard(card, link) {
    const root = card.root;
    root.dataset.status = link.status;
    root.dataset.state = link.state;
    root.classList.toggle("quiet", link.quiet);
    setText(card.label, link.label || "");
    setText(card.pill, link.status);
    card.pill.className = `pill status st-${link.status}`;
    setText(card.reason, link.reason);
    const dst = link.dstResolved || link.dstAddress;
    setText(card.route, `${link.senderAddress || "no address"} → ${dst || "not sending"}`);
    const last = link.quiet ? `went quiet: ${fmtAge(link.lastReceivedAge)}` : fmtAge(link.lastReceivedAge);
    setText(card.last, link.status === "active" || link.lastReceivedAge !== null ? last : "—");
    card.last.classList.toggle("warn", link.quiet);
    setText(card.since, fmtDuration(link.stateAge || 0));
    const txDrops = link.tx.dropped.buffer_full + link.tx.dropped.error;
    const rxDrops = link.rx.dropped.foreign + link.rx.dropped.no_peer + link.rx.dropped.buffer_full;
    let drops = txDrops || rxDrops ? `${fmtCount(txDrops)} out, ${fmtCount(rxDrops)} in` : "none";
    if (link.tx.lastErrno) drops += ` (last: ${link.tx.lastErrno})`;
    setText(card.drops, drops);
    card.drops.classList.toggle("warn", txDrops + rxDrops > 0);
    card.lgTx.textContent = `sent ${fmtRate(link.tx.bytesPerSecond)}`;
    card.lgRx.textContent = `received ${fmtRate(link.rx.bytesPerSecond)}`;
    const action = link.excluded ? "include" : "exclude";
    card.button.dataset.action = action;
    setText(card.button, link.excluded ? `Include ${link.name}` : `Exclude ${link.name}`);
    card.button.className = `action action-${action}`;
    card.button.disabled = state.pending.has(link.name);
    card.spark.setAttribute("aria-label", `traffic of ${link.name} over the last minutes`);
  }

  function serverCard(key) {
    const card = cardSkeleton(key);
    card.local = fact(card.facts, "sent to", "wide");
    card.last = fact(card.facts, "last heard");
    card.first = fact(card.facts, "first seen");
    card.counts = fact(card.facts, "datagrams in / out");
    card.drops = fact(card.facts, "drops");
    return card;
  }

  const SERVER_REASONS = {
    alive: "gets WireGuard's replies",
    pending: "seen, not yet carrying a WireGuard session: gets handshakes only",
    expired: "silent longer than clientTimeout: no replies",
  };

  function updateServerCard(card, client) {
    card.root.dataset.status = client.state;
    setText(card.pill, client.state);
    card.pill.className = `pill status st-${client.state === "alive" ? "active" : "idle"}`;
    setText(card.reason, SERVER_REASONS[client.state] || client.state);
    setText(card.local, client.localAddress || "—");
    setText(card.last, fmtAge(client.lastReceivedAge));
    setText(card.first, fmtAge(client.firstSeenAge));
    setText(card.counts, `${fmtCount(client.rx.datagrams)} / ${fmtCount(client.tx.datagrams)} (${fmtBytes(client.rx.bytes)} / ${fmtBytes(client.tx.bytes)})`);
    const drops = client.tx.dropped.buffer_full + client.tx.dropped.error;
    setText(card.drops, drops ? `${fmtCount(drops)}${client.tx.lastErrno ? ` (last: ${client.tx.lastErrno})` : ""}` : "none");
    card.drops.classList.toggle("warn", drops > 0);
    card.lgTx.textContent = `to client ${fmtRate(client.tx.bytesPerSecond)}`;
    card.lgRx.textContent = `from client ${fmtRate(client.rx.bytesPerSecond)}`;
    card.spark.setAttribute("aria-label", `traffic of ${client.address} over the last minutes`);
  }

  // ---- sparkline ----------------------------------------------------------------------------

  function drawSpark(card, key) {
    const canvas = card.spark;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const samples = state.samples;
    if (!samples.length) {
      setText(card.peak, "");
      return;
    }
    const end = samples[samples.length - 1].t;
    // The window grows with the history, from one minute up to the whole buffer.
    const span = Math.min(state.capacity * state.period, Math.max(60, end - samples[0].t));
    const tx = [];
    const rx = [];
    let peak = 0;
    for (const sample of samples) {
      const x = width - ((end - sample.t) / span) * width;
      const d = sample.links[key];
      const dt = sample.dt || state.period;
      const t = d ? d[0] / dt : 0;
      const r = d ? d[1] / dt : 0;
      peak = Math.max(peak, t, r);
      tx.push([x, t]);
      rx.push([x, r]);
    }
    const style = getComputedStyle(canvas);
    const scale = peak > 0 ? (height - 3) / peak : 0;
    const y = (v) => height - 1 - v * scale;
    // received: filled area; sent: line on top
    ctx.beginPath();
    ctx.moveTo(rx[0][0], height);
    for (const [x, v] of rx) ctx.lineTo(x, y(v));
    ctx.lineTo(rx[rx.length - 1][0], height);
    ctx.closePath();
    ctx.fillStyle = style.getPropertyValue("--rx-fill").trim() || "rgba(40,120,200,0.35)";
    ctx.fill();
    ctx.beginPath();
    tx.forEach(([x, v], i) => (i ? ctx.lineTo(x, y(v)) : ctx.moveTo(x, y(v))));
    ctx.strokeStyle = style.getPropertyValue("--tx-line").trim() || "#d2691e";
    ctx.lineWidth = 1.5;
    ctx.stroke();
    const minutes = Math.max(1, Math.round(span / 60));
    setText(card.peak, peak > 0 ? `peak ${fmtRate(peak)} · ${minutes} min` : `idle · ${minutes} min`);
  }

  // ---- commands -------------------------------------------------------------------------------

  async function act(name, action, button) {
    const links = state.status ? state.status.links : [];
    const link = links.find((l) => l.name === name);
    if (!link) return;
    if (action === "exclude" && link.status === "active") {
      const othersActive = links.filter((l) => l.status === "active" && l.name !== name).length;
      if (othersActive === 0) {
        const ok = window.confirm(
          `${name} is the last active link. Excluding it cuts the tunnel until another link ` +
          `comes up or you include ${name} again.\n\nExclude ${name}?`);
        if (!ok) return;
      }
    }
    state.pending.add(name);
    button.disabled = true;
    try {
      const response = await fetch(`api/v1/${action}`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ interface: name }),
        credentials: "same-origin",
        cache: "no-store",
      });
      let body = {};
      try {
        body = await response.json();
      } catch (err) {
        body = {};
      }
      if (!response.ok) {
        notice(`Could not ${action} ${name}: ${body.error || response.statusText}`, true);
      } else if (body.status !== "ok") {
        notice(`${name}: ${body.status}`);
      }
    } catch (err) {
      notice(`Could not reach engarde to ${action} ${name}.`, true);
    } finally {
      state.pending.delete(name);
      button.disabled = false;
    }
  }

  // ---- start ------------------------------------------------------------------------------

  window.addEventListener("resize", () => {
    if (state.status) render();
  });
  setInterval(watchdog, 1000);
  connect();
})();
