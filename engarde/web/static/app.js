// engarde dashboard: one EventSource, no polling, no framework.
//
// The server pushes a "snapshot" event when the page connects (status + traffic history) and an
// "update" event every second and after each exclusion (status + the newest history sample).
// Commands go through the original's JSON API (api/v1/exclude, api/v1/include).
//
// History samples carry, per link (client: interface; server: client address), what moved during
// the sample in the order of history.fields: tx bytes, rx bytes, tx datagrams, rx datagrams, then
// the copies won, late, lost and saved (what the link's copies were worth, receive side).
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
    cards: new Map(), // client: per interface; server: per client address
    groups: new Map(), // server: per client id
    pending: new Set(), // interfaces with a command in flight
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

  function fmtPct(value) {
    if (value === null || value === undefined) return "—";
    if (value === 0) return "0 %";
    if (value < 1) return `${value.toFixed(2)} %`;
    if (value < 10) return `${value.toFixed(1)} %`;
    return `${Math.round(value)} %`;
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "—";
    return ms < 10 ? `${Number(ms.toFixed(1))} ms` : `${Math.round(ms)} ms`;
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
    if (s.type === "client") renderClient(s);
    else renderServer(s);
  }

  function renderClient(s) {
    const main = $("items");
    const seen = new Set();
    s.links.forEach((link, position) => {
      const key = link.name;
      seen.add(key);
      let card = state.cards.get(key);
      if (!card) {
        card = clientCard(key);
        state.cards.set(key, card);
      }
      if (main.children[position] !== card.root) main.insertBefore(card.root, main.children[position] || null);
      updateClientCard(card, link);
      drawSpark(card, key);
      drawQuality(card, key);
    });
    dropUnseen(state.cards, seen);
    const empty = $("empty");
    empty.hidden = s.links.length > 0;
    setText(empty, "No network interfaces reported yet.");
  }

  function renderServer(s) {
    const main = $("items");
    main.className = "groups";
    const seenGroups = new Set();
    const seenCards = new Set();
    s.clients.forEach((client, position) => {
      const key = String(client.id);
      seenGroups.add(key);
      let group = state.groups.get(key);
      if (!group) {
        group = groupBlock(key);
        state.groups.set(key, group);
      }
      if (main.children[position] !== group.root) main.insertBefore(group.root, main.children[position] || null);
      updateGroup(group, client);
      client.addresses.forEach((address, i) => {
        const addressKey = address.address;
        seenCards.add(addressKey);
        let card = state.cards.get(addressKey);
        if (!card) {
          card = serverCard(addressKey);
          state.cards.set(addressKey, card);
        }
        if (group.cards.children[i] !== card.root) group.cards.insertBefore(card.root, group.cards.children[i] || null);
        updateServerCard(card, address);
        drawSpark(card, addressKey);
        drawQuality(card, addressKey);
      });
    });
    dropUnseen(state.cards, seenCards);
    dropUnseen(state.groups, seenGroups);
    renderPending(s);
    const empty = $("empty");
    const notes = [];
    if (!s.clients.length && !s.pending.length) notes.push("No client has sent anything yet.");
    if (s.clientsOmitted) notes.push(`${s.clientsOmitted} less recently heard clients not shown (see api/v2/status).`);
    empty.hidden = notes.length === 0;
    setText(empty, notes.join(" "));
  }

  function dropUnseen(map, seen) {
    for (const [key, item] of map) {
      if (!seen.has(key)) {
        item.root.remove();
        map.delete(key);
      }
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
      summaryItem(box, "dedup", dedupText(s), "dedup");
      if (c.no_uplink_drops) summaryItem(box, "dropped, no link", fmtCount(c.no_uplink_drops), "warn");
    } else {
      const shown = s.clients.length + (s.clientsOmitted || 0);
      summaryItem(box, "clients alive", `${s.clientsAlive} of ${shown}`, s.clientsAlive ? "good" : "warn");
      summaryItem(box, "addresses alive", fmtCount(s.addressesAlive));
      if (s.addressesPending) summaryItem(box, "pending", fmtCount(s.addressesPending));
      summaryItem(box, "dedup", dedupText(s), "dedup");
      if (s.probesOpen) summaryItem(box, "probes open", fmtCount(s.probesOpen));
      if (c.junk_datagrams) summaryItem(box, "junk dropped", fmtCount(c.junk_datagrams), "warn");
      const tx = s.clients.reduce((a, g) => a + g.tx.bytesPerSecond, 0);
      const rx = s.clients.reduce((a, g) => a + g.rx.bytesPerSecond, 0);
      summaryItem(box, "from / to clients", `${fmtRate(rx)} / ${fmtRate(tx)}`);
      summaryItem(box, "WireGuard", s.dstAddress);
      summaryItem(box, "listening", s.listenAddress);
    }
    const wgDrops = (c.wg_tx_dropped_full || 0) + (c.wg_tx_errors || 0);
    if (wgDrops) summaryItem(box, "not delivered to WireGuard", fmtCount(wgDrops), "warn");
    summaryItem(box, "running for", fmtDuration(s.uptime));
  }

  function dedupText(s) {
    return s.dedup ? `on · ${fmtCount(s.duplicatesDropped)} copies dropped` : "off (WireGuard drops copies)";
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

  // What a link's copies are worth (receive side): share of first arrivals, loss, lag behind
  // the fastest link, datagrams only it delivered; a plot of loss % and saved per second.
  function addQuality(card) {
    const box = el("div", "quality");
    const badge = el("div", "badge-drop", "saved nothing for an hour: the one to drop");
    badge.hidden = true;
    const facts = el("dl", "facts qfacts");
    card.qShare = fact(facts, "first arrivals");
    card.qShare.classList.add("q-share");
    card.qLoss = fact(facts, "loss");
    card.qLoss.classList.add("q-loss");
    card.qLag = fact(facts, "lag behind fastest");
    card.qLag.classList.add("q-lag");
    card.qSaved = fact(facts, "saved (only it delivered)");
    card.qSaved.classList.add("q-saved");
    const plot = el("canvas", "qplot");
    plot.setAttribute("role", "img");
    const legend = el("div", "legend");
    const lgLoss = el("span", "lg lg-loss", "loss %");
    const lgSaved = el("span", "lg lg-saved", "saved / s");
    const qpeak = el("span", "qpeak");
    legend.append(lgLoss, lgSaved, qpeak);
    box.append(badge, facts, plot, legend);
    card.root.append(box);
    Object.assign(card, { quality: box, badge, qplot: plot, qpeak });
  }

  function updateQuality(card, q, what) {
    const minute = q.lastMinute;
    const recent = minute.seconds >= 59 ? "last min" : `last ${Math.round(minute.seconds)} s`;
    card.root.classList.toggle("drop-me", q.idleForHour);
    card.badge.hidden = !q.idleForHour;
    setText(card.qShare, q.firstSharePct === null ? "—" : `${fmtPct(q.firstSharePct)} (${recent})`);
    const loss = q.lossPct === null ? `— (${recent})` : `${fmtPct(q.lossPct)} (${recent})`;
    setText(card.qLoss, `${loss} · ${fmtPct(q.lossPctTotal)} total`);
    card.qLoss.classList.toggle("q-warn", (q.lossPct || 0) >= 1);
    let lag;
    if (q.lagP50Ms !== null) lag = `p50 ≤${fmtMs(q.lagP50Ms)} · p95 ≤${fmtMs(q.lagP95Ms)}`;
    else if (minute.won > 0) lag = "never late: the fastest";
    else lag = "—";
    if (q.lagMaxMs !== null) lag += ` (max ${fmtMs(q.lagMaxMs)})`;
    setText(card.qLag, lag);
    setText(card.qSaved, `${fmtCount(minute.saved)} ${recent} · ${fmtCount(q.saved)} since start`);
    card.qSaved.classList.toggle("q-good", minute.saved > 0);
    card.qplot.setAttribute("aria-label", `loss and datagrams saved by ${what} over the last minutes`);
  }

  function clientCard(key) {
    const card = cardSkeleton(key);
    card.route = fact(card.facts, "from → to", "wide");
    card.paths = fact(card.facts, "paths", "wide paths");
    card.last = fact(card.facts, "last heard");
    card.since = fact(card.facts, "in this state");
    card.drops = fact(card.facts, "drops");
    card.lgTx.textContent = "sent";
    card.lgRx.textContent = "received";
    addQuality(card);
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
    // Every path of the link (a source address with its own socket) and its family.
    const paths = link.paths || [];
    setText(card.paths, paths.length
      ? paths.map((p) => `${p.address} (${p.family === "ipv6" ? "IPv6" : "IPv4"}, ${p.status})`).join(" · ")
      : "none");
    if (paths.length) {
      const active = paths.find((p) => p.status === "active");
      if (active) setText(card.route, `${active.address} → ${active.dstResolved || active.dstAddress}`);
    }
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
    updateQuality(card, link.quality, link.name);
  }

  function serverCard(key) {
    const card = cardSkeleton(key);
    card.local = fact(card.facts, "sent to", "wide");
    card.last = fact(card.facts, "last heard");
    card.first = fact(card.facts, "first seen");
    card.counts = fact(card.facts, "datagrams in / out");
    card.drops = fact(card.facts, "drops");
    addQuality(card);
    return card;
  }

  const SERVER_REASONS = {
    alive: "gets WireGuard's replies",
    expired: "silent longer than clientTimeout: no replies",
  };

  const PROVEN_BY = {
    copy: "its copies match the client's",
    handshake: "WireGuard answered its handshake",
    wireguard: "WireGuard answered its data",
    relayNonWireGuard: "relayNonWireGuard",
  };

  function updateServerCard(card, address) {
    card.root.dataset.status = address.state;
    setText(card.pill, address.state);
    card.pill.className = `pill status st-${address.state === "alive" ? "active" : "idle"}`;
    let reason = SERVER_REASONS[address.state] || address.state;
    if (address.provenBy) reason += ` · proven: ${PROVEN_BY[address.provenBy] || address.provenBy}`;
    if (address.probe) reason += " · probe open";
    setText(card.reason, reason);
    setText(card.local, address.localAddress || "—");
    setText(card.last, fmtAge(address.lastReceivedAge));
    setText(card.first, fmtAge(address.firstSeenAge));
    setText(card.counts, `${fmtCount(address.rx.datagrams)} / ${fmtCount(address.tx.datagrams)} (${fmtBytes(address.rx.bytes)} / ${fmtBytes(address.tx.bytes)})`);
    const drops = address.tx.dropped.buffer_full + address.tx.dropped.error;
    setText(card.drops, drops ? `${fmtCount(drops)}${address.tx.lastErrno ? ` (last: ${address.tx.lastErrno})` : ""}` : "none");
    card.drops.classList.toggle("warn", drops > 0);
    card.lgTx.textContent = `to client ${fmtRate(address.tx.bytesPerSecond)}`;
    card.lgRx.textContent = `from client ${fmtRate(address.rx.bytesPerSecond)}`;
    card.spark.setAttribute("aria-label", `traffic of ${address.address} over the last minutes`);
    updateQuality(card, address.quality, address.address);
  }

  // One block per client (a WireGuard peer: a field kit), its addresses as cards inside.
  function groupBlock(key) {
    const root = el("section", "group");
    root.dataset.client = key;
    const head = el("div", "group-head");
    const title = el("h2", "group-name");
    const name = el("span", "name", `client #${key}`);
    const label = el("span", "label");
    title.append(name, label);
    const pill = el("span", "pill status");
    head.append(title, pill);
    const facts = el("dl", "facts group-facts");
    const group = { root, label, pill };
    group.sessions = fact(facts, "WireGuard sessions", "wide");
    group.sessions.classList.add("sessions");
    group.first = fact(facts, "first seen");
    group.last = fact(facts, "last heard");
    group.traffic = fact(facts, "from / to client");
    group.dups = fact(facts, "copies dropped");
    group.copies = fact(facts, "copies (won / late / lost / saved)", "wide");
    group.copies.classList.add("group-copies");
    group.omitted = el("p", "omitted");
    group.omitted.hidden = true;
    group.cards = el("div", "cards");
    root.append(head, facts, group.cards, group.omitted);
    return group;
  }

  function updateGroup(group, client) {
    const alive = client.addressesAlive;
    group.root.dataset.status = alive ? "alive" : "expired";
    setText(group.label, client.label || "");
    const total = client.addresses.length + (client.addressesOmitted || 0);
    setText(group.pill, `${alive} of ${total} alive`);
    group.pill.className = `pill status st-${alive ? "active" : "idle"}`;
    const ours = client.sessions.length ? client.sessions.join(", ") : "none yet";
    const theirs = client.peerSessions.length ? ` (peer: ${client.peerSessions.join(", ")})` : "";
    setText(group.sessions, `${ours}${theirs}`);
    setText(group.first, fmtAge(client.firstSeenAge));
    setText(group.last, fmtAge(client.lastReceivedAge));
    setText(group.traffic, `${fmtRate(client.rx.bytesPerSecond)} / ${fmtRate(client.tx.bytesPerSecond)}`);
    setText(group.dups, fmtCount(client.duplicatesDropped));
    const q = client.quality;
    const m = q.lastMinute;
    const recent = m.seconds >= 59 ? "last min" : `last ${Math.round(m.seconds)} s`;
    setText(group.copies,
      `${fmtCount(m.won)} / ${fmtCount(m.late)} / ${fmtCount(m.lost)} / ${fmtCount(m.saved)} ${recent} · ` +
      `${fmtCount(q.won)} / ${fmtCount(q.late)} / ${fmtCount(q.lost)} / ${fmtCount(q.saved)} since start`);
    group.omitted.hidden = !client.addressesOmitted;
    setText(group.omitted, client.addressesOmitted
      ? `${client.addressesOmitted} less recently heard addresses not shown (see api/v2/status).` : "");
  }

  // Unproven addresses: seen, not (yet) shown to carry a WireGuard session; they receive nothing.
  function renderPending(s) {
    const section = $("pending");
    const omitted = s.pendingOmitted || 0;
    section.hidden = s.pending.length === 0;
    if (section.hidden) return;
    setText($("pending-count"), `${fmtCount(s.addressesPending)}`);
    const rows = s.pending.map((p) => {
      const row = el("tr");
      row.dataset.key = p.address;
      row.append(
        el("td", "mono", p.address),
        el("td", "mono", p.localAddress || "—"),
        el("td", "", fmtAge(p.firstSeenAge)),
        el("td", "", fmtAge(p.lastReceivedAge)),
        el("td", "num", fmtCount(p.rx.datagrams)),
        el("td", "", p.probe ? "open" : ""),
      );
      return row;
    });
    $("pending-rows").replaceChildren(...rows);
    const note = $("pending-omitted");
    note.hidden = omitted === 0;
    setText(note, omitted ? `${omitted} less recently heard pending addresses not shown.` : "");
  }

  // ---- sparkline ----------------------------------------------------------------------------

  function prepare(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return null;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    return { ctx, width, height };
  }

  // The window grows with the history, from one minute up to the whole buffer.
  function timeSpan(samples) {
    const end = samples[samples.length - 1].t;
    return [end, Math.min(state.capacity * state.period, Math.max(60, end - samples[0].t))];
  }

  function drawSpark(card, key) {
    const canvas = card.spark;
    const area = prepare(canvas);
    if (!area) return;
    const { ctx, width, height } = area;
    const samples = state.samples;
    if (!samples.length) {
      setText(card.peak, "");
      return;
    }
    const [end, span] = timeSpan(samples);
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

  // Per second: loss % (lost / (won + late + lost)) as a line, datagrams saved (delivered by
  // this link only) as bars, each on its own scale (loss: at least 0..1 %).
  function drawQuality(card, key) {
    const area = prepare(card.qplot);
    if (!area) return;
    const { ctx, width, height } = area;
    const samples = state.samples;
    if (!samples.length) {
      setText(card.qpeak, "");
      return;
    }
    const [end, span] = timeSpan(samples);
    const points = [];
    let peakLoss = 0;
    let peakSaved = 0;
    let any = false;
    for (const sample of samples) {
      const d = sample.links[key];
      const x = width - ((end - sample.t) / span) * width;
      if (!d || d.length < 8) {
        points.push([x, null, 0]);
        continue;
      }
      const [won, late, lost, saved] = d.slice(4, 8);
      const expected = won + late + lost;
      const loss = expected ? (100 * lost) / expected : null;
      const perSecond = saved / (sample.dt || state.period);
      if (expected || saved) any = true;
      if (loss !== null) peakLoss = Math.max(peakLoss, loss);
      peakSaved = Math.max(peakSaved, perSecond);
      points.push([x, loss, perSecond]);
    }
    const style = getComputedStyle(card.qplot);
    const savedScale = peakSaved > 0 ? (height - 3) / peakSaved : 0;
    ctx.fillStyle = style.getPropertyValue("--saved").trim() || "#1e8e3e";
    const barWidth = Math.max(1, width / Math.max(60, span / state.period) - 0.5);
    for (const [x, , perSecond] of points) {
      if (perSecond > 0) {
        const h = Math.max(1, perSecond * savedScale);
        ctx.fillRect(x - barWidth, height - h, barWidth, h);
      }
    }
    const lossTop = Math.max(1, peakLoss);
    const y = (v) => height - 1 - (v / lossTop) * (height - 3);
    ctx.beginPath();
    let drawing = false;
    for (const [x, loss] of points) {
      if (loss === null) {
        drawing = false;
        continue;
      }
      if (drawing) ctx.lineTo(x, y(loss));
      else ctx.moveTo(x, y(loss));
      drawing = true;
    }
    ctx.strokeStyle = style.getPropertyValue("--loss").trim() || "#c5221f";
    ctx.lineWidth = 1.5;
    ctx.stroke();
    setText(card.qpeak, any
      ? `peak loss ${fmtPct(peakLoss)} · saved ${peakSaved.toFixed(peakSaved < 10 ? 1 : 0)}/s`
      : "no copies yet");
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
