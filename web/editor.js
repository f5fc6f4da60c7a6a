// A plain <textarea> code editor with a line-number gutter and per-line error marks.
//
// The textarea does not wrap (wrap="off"), so line N of the text is row N on screen; a layer
// behind the text paints the error rows, a layer above it shows each error's message at the right
// of its row, and both follow the textarea's scroll position.

import {h} from "./dom.js";

export class SpecEditor {
  /** @param {{id: string, label: string, describedBy?: string, onInput?: Function}} opts */
  constructor({id, label, describedBy, onInput}) {
    this.gutter = h("div", {class: "editor-gutter-lines"});
    this.marks = h("div", {class: "editor-marks", "aria-hidden": "true"});
    this.notes = h("div", {class: "editor-notes"});
    this.textarea = h("textarea", {
      id, class: "editor-text", wrap: "off", spellcheck: "false", autocapitalize: "off", autocomplete: "off",
      "aria-label": label, "aria-describedby": describedBy,
    });
    this.el = h("div", {class: "editor"}, h("div", {class: "editor-gutter", "aria-hidden": "true"}, this.gutter), h("div", {class: "editor-body"}, this.marks, this.textarea, this.notes));
    this.errors = [];
    this.lineCount = 0;
    this.textarea.addEventListener("input", () => {
      this.renderGutter();
      onInput && onInput(this.value);
    });
    this.textarea.addEventListener("scroll", () => this.syncScroll());
    this.textarea.addEventListener("keydown", (e) => {
      if (e.key === "Tab" && !e.shiftKey && !e.ctrlKey && !e.metaKey && !e.altKey && this.tabInserts) {
        e.preventDefault();
        document.execCommand("insertText", false, "  ");
      }
      if (e.key === "Escape") this.tabInserts = false; // let Tab leave the editor (keyboard users)
    });
    this.textarea.addEventListener("focus", () => { this.tabInserts = true; });
    this.tabInserts = true;
  }

  get value() { return this.textarea.value; }

  set value(text) {
    this.textarea.value = text;
    this.renderGutter();
  }

  renderGutter() {
    const count = this.textarea.value.split("\n").length;
    if (count !== this.lineCount) {
      this.lineCount = count;
      let text = "";
      for (let i = 1; i <= count; i++) text += `${i}\n`;
      this.gutter.textContent = text;
    }
    this.paint();
  }

  syncScroll() {
    const {scrollTop, scrollLeft} = this.textarea;
    this.gutter.style.transform = `translateY(${-scrollTop}px)`;
    this.marks.style.transform = `translate(${-scrollLeft}px, ${-scrollTop}px)`;
    this.notes.style.transform = `translateY(${-scrollTop}px)`;
  }

  /** errors: [{line, message, path}] (line 1-based). Paints them and sets aria-invalid. */
  setErrors(errors) {
    this.errors = errors;
    this.textarea.setAttribute("aria-invalid", errors.length ? "true" : "false");
    this.paint();
  }

  paint() {
    const style = getComputedStyle(this.textarea);
    const lh = parseFloat(style.lineHeight) || 20;
    const top = parseFloat(style.paddingTop) || 0;
    this.marks.replaceChildren();
    this.notes.replaceChildren();
    const gutterLines = new Set();
    const byLine = new Map();
    for (const err of this.errors) {
      const line = Math.max(1, Math.min(err.line || 1, this.lineCount || 1));
      if (!byLine.has(line)) byLine.set(line, []);
      byLine.get(line).push(err);
      gutterLines.add(line);
    }
    for (const [line, errs] of byLine) {
      const y = top + (line - 1) * lh;
      this.marks.append(h("div", {class: "editor-mark", style: {top: `${y}px`, height: `${lh}px`}}));
      this.notes.append(h("div", {
        class: "editor-note", role: "note", style: {top: `${y}px`, minHeight: `${lh}px`},
        dataset: {line: String(line), path: errs.map((e) => e.path || "").join(" ")},
      }, errs.map((e) => e.message).join("; ")));
    }
    this.gutter.dataset.errorLines = [...gutterLines].join(" ");
    this.syncScroll();
  }

  /** Put the caret on `line`, select it, and scroll it into view. */
  goToLine(line) {
    const lines = this.textarea.value.split("\n");
    const n = Math.max(1, Math.min(line, lines.length));
    let start = 0;
    for (let i = 0; i < n - 1; i++) start += lines[i].length + 1;
    this.textarea.focus();
    this.textarea.setSelectionRange(start, start + lines[n - 1].length);
    const lh = parseFloat(getComputedStyle(this.textarea).lineHeight) || 20;
    const target = (n - 1) * lh;
    if (target < this.textarea.scrollTop || target > this.textarea.scrollTop + this.textarea.clientHeight - 2 * lh) {
      this.textarea.scrollTop = Math.max(0, target - this.textarea.clientHeight / 3);
    }
  }
}
