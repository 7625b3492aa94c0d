// WebSocket signaling client: JSON text frames {id, event, data}.
// request() resolves with the answer's data (same id) or rejects with a SignalingError;
// requestAnswer() resolves with {event, data} (a join may answer 'joined' or 'redirect').
// Notifications (no id) go to the onNotification callback.

export class SignalingError extends Error {
  constructor(code, message, request) {
    super(`${request ? request + ': ' : ''}${message} (${code})`);
    this.name = 'SignalingError';
    this.code = code;
    this.request = request;
  }
}

export class Signaling {
  constructor(url, { onNotification, onStateChange, timeoutMs = 15000 } = {}) {
    this.url = url;
    this.onNotification = onNotification || (() => {});
    this.onStateChange = onStateChange || (() => {});
    this.timeoutMs = timeoutMs;
    this.state = 'new';
    this.ws = null;
    this._nextId = 1;
    this._pending = new Map();
    this._closedByUs = false;
  }

  _setState(state, detail) {
    this.state = state;
    this.onStateChange(state, detail);
  }

  open() {
    this._setState('connecting');
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this.ws = ws;
      let opened = false;
      ws.addEventListener('open', () => {
        opened = true;
        this._setState('open');
        resolve();
      });
      ws.addEventListener('message', (ev) => this._onMessage(ev.data));
      ws.addEventListener('close', (ev) => {
        const err = new SignalingError('closed', `socket closed (${ev.code})`);
        for (const { reject: rej, timer } of this._pending.values()) {
          clearTimeout(timer);
          rej(err);
        }
        this._pending.clear();
        this._setState('closed', { code: ev.code, reason: ev.reason, byUs: this._closedByUs });
        if (!opened) reject(err);
      });
    });
  }

  close() {
    this._closedByUs = true;
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, 'bye');
  }

  request(event, data = {}) {
    return this.requestAnswer(event, data).then((answer) => answer.data);
  }

  requestAnswer(event, data = {}) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new SignalingError('closed', 'not connected', event));
    }
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new SignalingError('timeout', 'no answer', event));
      }, this.timeoutMs);
      this._pending.set(id, { resolve, reject, timer, event });
      this.ws.send(JSON.stringify({ id, event, data }));
    });
  }

  _onMessage(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      console.warn('[pysfu] signaling: not JSON', text);
      return;
    }
    if (msg.id !== undefined && msg.id !== null && this._pending.has(msg.id)) {
      const { resolve, reject, timer, event } = this._pending.get(msg.id);
      this._pending.delete(msg.id);
      clearTimeout(timer);
      if (msg.event === 'error') {
        const d = msg.data || {};
        reject(new SignalingError(d.code || 'error', d.message || 'error', d.request || event));
      } else {
        resolve({ event: msg.event, data: msg.data || {} });
      }
      return;
    }
    if (msg.event === 'error') {
      const d = msg.data || {};
      console.warn('[pysfu] signaling error without request:', d.code, d.message);
      return;
    }
    this.onNotification(msg.event, msg.data || {});
  }
}
