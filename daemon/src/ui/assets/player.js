// A small asciicast v3 player: a terminal screen (text, cursor moves, erases; colours
// are dropped), play/pause, speed and seek. Written here because the console loads
// nothing from elsewhere.
"use strict";

(function () {
  function parseCast(text) {
    const lines = text.split("\n").filter((line) => line.trim() !== "");
    const header = JSON.parse(lines[0] || "{}");
    const term = header.term || {};
    const events = [];
    let at = 0;
    for (const line of lines.slice(1)) {
      let event;
      try { event = JSON.parse(line); } catch (_) { continue; }
      if (!Array.isArray(event) || event.length < 3) continue;
      at += Number(event[0]) || 0; // v3: seconds since the previous event
      events.push({ at, code: event[1], data: String(event[2]) });
    }
    return { cols: term.cols || 80, rows: term.rows || 24, events, duration: at };
  }

  function Screen(cols, rows) {
    this.cols = cols; this.rows = rows; this.reset();
  }
  Screen.prototype.reset = function () {
    this.lines = [[]]; this.top = 0; this.x = 0; this.y = 0; this.pending = "";
  };
  Screen.prototype.line = function (y) {
    while (this.lines.length <= y) this.lines.push([]);
    return this.lines[y];
  };
  Screen.prototype.newline = function () {
    this.y += 1;
    this.line(this.y);
    if (this.y - this.top >= this.rows) this.top = this.y - this.rows + 1;
  };
  Screen.prototype.put = function (ch) {
    if (this.x >= this.cols) { this.x = 0; this.newline(); }
    const line = this.line(this.y);
    while (line.length < this.x) line.push(" ");
    line[this.x] = ch; this.x += 1;
  };
  Screen.prototype.csi = function (params, final) {
    const n = params.split(";").map((p) => parseInt(p, 10));
    const first = isNaN(n[0]) ? 0 : n[0];
    const line = this.line(this.y);
    switch (final) {
      case "A": this.y = Math.max(this.top, this.y - (first || 1)); break;
      case "B": this.y += first || 1; this.line(this.y); break;
      case "C": this.x = Math.min(this.cols - 1, this.x + (first || 1)); break;
      case "D": this.x = Math.max(0, this.x - (first || 1)); break;
      case "G": this.x = Math.max(0, (first || 1) - 1); break;
      case "H": case "f":
        this.y = this.top + Math.max(0, (first || 1) - 1);
        this.x = Math.max(0, (isNaN(n[1]) ? 1 : n[1]) - 1);
        this.line(this.y); break;
      case "K":
        if (first === 0) line.length = Math.min(line.length, this.x);
        else if (first === 1) for (let i = 0; i <= this.x && i < line.length; i++) line[i] = " ";
        else line.length = 0;
        break;
      case "J":
        if (first === 2 || first === 3) {
          for (let y = this.top; y < this.lines.length; y++) this.lines[y] = [];
          this.x = 0; this.y = this.top;
        } else if (first === 0) {
          line.length = Math.min(line.length, this.x);
          this.lines.length = Math.min(this.lines.length, this.y + 1);
        }
        break;
      default: break; // colours, modes: not shown
    }
  };
  Screen.prototype.write = function (data) {
    const text = this.pending + data;
    this.pending = "";
    for (let i = 0; i < text.length; i++) {
      const ch = text[i];
      if (ch === "\x1b") {
        const rest = text.slice(i);
        const csi = /^\x1b\[([?>=]?)([0-9;]*)([@-~])/.exec(rest);
        if (csi) { if (!csi[1]) this.csi(csi[2], csi[3]); i += csi[0].length - 1; continue; }
        const osc = /^\x1b\][^\x07\x1b]*(\x07|\x1b\\)/.exec(rest);
        if (osc) { i += osc[0].length - 1; continue; }
        if (rest.length < 3 || /^\x1b(\[[0-9;?]*|\][^\x07]*)$/.test(rest)) { this.pending = rest; return; }
        i += 1; continue; // a two-character escape
      }
      if (ch === "\r") this.x = 0;
      else if (ch === "\n") this.newline();
      else if (ch === "\b") this.x = Math.max(0, this.x - 1);
      else if (ch === "\t") this.x = Math.min(this.cols - 1, (Math.floor(this.x / 8) + 1) * 8);
      else if (ch === "\x07" || ch < " ") continue;
      else this.put(ch);
    }
  };
  Screen.prototype.text = function () {
    return this.lines.map((line) => line.join("").replace(/\s+$/, "")).join("\n").replace(/\n+$/, "");
  };

  function fmt(seconds) {
    const s = Math.max(0, seconds);
    return Math.floor(s / 60) + ":" + String(Math.floor(s % 60)).padStart(2, "0") + "." + String(Math.floor((s % 1) * 10));
  }

  // Builds a player for `castText` inside `container`.
  function CastPlayer(container, castText, label) {
    const cast = parseCast(castText);
    const root = document.createElement("section");
    root.className = "player";
    root.setAttribute("aria-label", label || "Terminal recording");
    root.innerHTML =
      '<div class="controls">' +
      '<button type="button" class="play">Play</button>' +
      '<label>Speed <select class="speed"><option value="0.5">0.5×</option><option value="1" selected>1×</option>' +
      '<option value="2">2×</option><option value="4">4×</option><option value="8">8×</option></select></label>' +
      '<input class="seek" type="range" min="0" step="0.01" aria-label="Position">' +
      '<span class="time" aria-live="off"></span></div>' +
      '<pre class="screen" tabindex="0" aria-label="Terminal output"></pre>';
    container.appendChild(root);
    const play = root.querySelector(".play"), speed = root.querySelector(".speed");
    const seek = root.querySelector(".seek"), time = root.querySelector(".time");
    const screenEl = root.querySelector(".screen");
    const screen = new Screen(cast.cols, cast.rows);
    seek.max = String(cast.duration);
    let position = 0, applied = 0, playing = false, last = 0, frame = 0;

    function render() {
      screenEl.textContent = screen.text();
      seek.value = String(position);
      time.textContent = fmt(position) + " / " + fmt(cast.duration);
      root.dataset.position = String(position);
    }
    function advanceTo(t) {
      if (t < position || applied === 0 && t === 0) { screen.reset(); applied = 0; }
      while (applied < cast.events.length && cast.events[applied].at <= t) {
        const e = cast.events[applied++];
        if (e.code === "o") screen.write(e.data);
      }
      position = t;
      render();
    }
    function tick(now) {
      if (!playing) return;
      const next = Math.min(cast.duration, position + ((now - last) / 1000) * Number(speed.value));
      last = now;
      advanceTo(next);
      if (next >= cast.duration) { setPlaying(false); root.dataset.ended = "true"; return; }
      frame = requestAnimationFrame(tick);
    }
    function setPlaying(on) {
      playing = on;
      play.textContent = on ? "Pause" : "Play";
      if (on) {
        if (position >= cast.duration) advanceTo(0);
        root.dataset.ended = "false";
        last = performance.now();
        frame = requestAnimationFrame(tick);
      } else cancelAnimationFrame(frame);
    }
    play.addEventListener("click", () => setPlaying(!playing));
    seek.addEventListener("input", () => advanceTo(Number(seek.value)));
    screenEl.addEventListener("keydown", (event) => {
      if (event.key === " ") { event.preventDefault(); setPlaying(!playing); }
      if (event.key === "ArrowRight") advanceTo(Math.min(cast.duration, position + 5));
      if (event.key === "ArrowLeft") advanceTo(Math.max(0, position - 5));
    });
    advanceTo(0);
    return { play: () => setPlaying(true), seek: advanceTo, element: root };
  }

  window.CastPlayer = CastPlayer;
})();
