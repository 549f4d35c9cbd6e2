// Runs inside Chromium with MQTT.js's browser bundle (global `mqtt`). driver.js calls
// runBrokerTest(cases) and judges the result it returns; the page only reports, so a page that
// hangs shows up as the driver's timeout rather than as a silent pass.
'use strict';

// Deterministic bytes (xorshift32) so a corrupted byte is found at its offset; every byte value
// occurs, which would expose a broker that sends binary MQTT data in text frames.
function bytes(length, seed) {
  const out = new Uint8Array(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

function text(s) {
  return new TextEncoder().encode(s);
}

// Payloads over 64 KiB need the WebSocket 64-bit length form and make the broker split or join
// MQTT packets across frames, in both directions.
function messagePlan() {
  return [
    { qos: 0, payload: text('qos0 first: grüße ✓') },
    { qos: 1, payload: text('qos1 first') },
    { qos: 2, payload: text('qos2 first') },
    { qos: 0, payload: bytes(64 * 1024 + 1, 1) },
    { qos: 1, payload: bytes(100 * 1024 + 3, 2) },
    { qos: 2, payload: bytes(200 * 1024, 3) },
    { qos: 0, payload: text('qos0 last') },
    { qos: 1, payload: text('qos1 last') },
    { qos: 2, payload: text('qos2 last') },
  ];
}

function firstDifference(want, got) {
  if (want.length !== got.length) return `length ${got.length}, want ${want.length}`;
  for (let i = 0; i < want.length; i++) {
    if (want[i] !== got[i]) return `byte ${i} is ${got[i]}, want ${want[i]}`;
  }
  return null;
}

function describe(payload) {
  return payload.length > 64 ? `${payload.length} binary bytes` : JSON.stringify(new TextDecoder().decode(payload));
}

// MQTT orders delivery per topic and QoS level, not across levels (a QoS 2 message is released on
// PUBREL, after QoS 0 messages sent later may already have gone out), so order is checked per QoS.
function check(plan, arrived, topic) {
  const problems = [];
  if (arrived.length !== plan.length) problems.push(`${arrived.length} messages arrived, want ${plan.length}`);
  for (const qos of [0, 1, 2]) {
    const want = plan.filter((m) => m.qos === qos);
    const got = arrived.filter((m) => m.qos === qos);
    for (let i = 0; i < Math.max(want.length, got.length); i++) {
      const where = `QoS ${qos} message ${i + 1}`;
      if (!got[i]) { problems.push(`${where} (${describe(want[i].payload)}) missing`); continue; }
      if (!want[i]) { problems.push(`${where} unexpected (${describe(got[i].payload)})`); continue; }
      if (got[i].topic !== topic) problems.push(`${where} came on topic ${got[i].topic}`);
      const diff = firstDifference(want[i].payload, got[i].payload);
      if (diff) problems.push(`${where} (${describe(want[i].payload)}) out of order or corrupted: ${diff}`);
    }
  }
  const strays = arrived.filter((m) => ![0, 1, 2].includes(m.qos));
  if (strays.length) problems.push(`${strays.length} messages with QoS ${strays.map((m) => m.qos)}`);
  return problems;
}

async function runCase({ url, protocolVersion, timeoutMs }) {
  const started = performance.now();
  const deadline = started + timeoutMs;
  const plan = messagePlan();
  const id = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
  const topic = `ringmq-browser-test/${id}`;
  const result = { url, protocolVersion, ok: false, sent: plan.length, received: 0, bytes: 0, ms: 0, stepMs: {}, problems: [] };
  let client = null;
  let step = 'connect';
  let stepStarted = started;
  // Per-step times make a slow broker visible even when the case passes.
  const next = (name) => {
    const now = performance.now();
    result.stepMs[step] = Math.round(now - stepStarted);
    step = name;
    stepStarted = now;
  };
  let failConnection;
  const connectionFailed = new Promise((_, reject) => { failConnection = reject; });
  // Every wait races the case's deadline and the connection dying, so a broker that drops the
  // socket or stops answering fails this case with the step it was in.
  const within = (promise) => {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error('timed out')), Math.max(0, deadline - performance.now()));
    });
    return Promise.race([promise, timeout, connectionFailed]).finally(() => clearTimeout(timer));
  };
  connectionFailed.catch(() => {}); // observed through within(); a late failure is not an unhandled rejection
  let socket = null;
  const arrived = [];
  try {
    // allowRetries=false: a socket that closes before CONNACK rejects at once instead of waiting
    // for the deadline.
    client = await within(mqtt.connectAsync(url, {
      protocolVersion,
      clientId: `browser-${id}`,
      clean: true,
      keepalive: 30,
      connectTimeout: Math.max(1000, Math.floor(deadline - performance.now())),
      reconnectPeriod: 0,
      createWebsocket: (u, protocols) => (socket = new WebSocket(u, protocols)),
    }, false));
    result.subprotocol = socket ? socket.protocol : null;
    if (result.subprotocol !== 'mqtt') throw new Error(`WebSocket subprotocol is ${JSON.stringify(result.subprotocol)}, want "mqtt"`);
    client.on('error', (e) => failConnection(new Error(`client error: ${e.message}`)));
    client.on('close', () => failConnection(new Error('connection closed by the broker')));

    let allArrived;
    const arrivedPromise = new Promise((resolve) => { allArrived = resolve; });
    client.on('message', (t, payload, packet) => {
      arrived.push({ topic: t, qos: packet.qos, payload: new Uint8Array(payload) });
      if (arrived.length >= plan.length) allArrived();
    });

    next('subscribe');
    const granted = await within(client.subscribeAsync(topic, { qos: 2 }));
    const grantedQos = granted && granted[0] ? granted[0].qos : undefined;
    if (grantedQos !== 2) throw new Error(`SUBACK granted QoS ${grantedQos}, want 2`);

    // Published back to back without waiting for acks, so several packets are in flight at once.
    next('publish');
    await within(Promise.all(plan.map((m) => client.publishAsync(topic, m.payload, { qos: m.qos }))));

    next('receive');
    try {
      await within(arrivedPromise);
    } catch (e) {
      result.problems.push(`waiting for messages: ${e.message}`);
    }
    result.problems.push(...check(plan, arrived, topic));

    next('disconnect');
    client.removeAllListeners('close');
    await within(client.endAsync());
    client = null;
    next('done');
  } catch (e) {
    result.stepMs[step] = Math.round(performance.now() - stepStarted);
    result.problems.push(`${step}: ${e && e.message ? e.message : String(e)}`);
  } finally {
    if (client) client.end(true);
  }
  result.received = arrived.length;
  result.bytes = arrived.reduce((n, m) => n + m.payload.length, 0);
  result.ok = result.problems.length === 0;
  result.ms = Math.round(performance.now() - started);
  return result;
}

// Cases run one after another so a failure names exactly one URL and protocol version.
async function runBrokerTest(cases) {
  const results = [];
  for (const c of cases) results.push(await runCase(c));
  const out = { ok: results.length > 0 && results.every((r) => r.ok), userAgent: navigator.userAgent, results };
  document.getElementById('result').textContent = JSON.stringify(out, null, 2);
  return out;
}

window.runBrokerTest = runBrokerTest;
