// Spec text in the editor: JSON parsed here with the line of every path; YAML parsed by the server
// (POST /ui/spec/parse, PyYAML's safe loader, same {spec, lines} answer); YAML written here.

import {api} from "./api.js";
import {pathKey} from "./dom.js";

export class SpecSyntaxError extends Error {
  constructor(message, line, column) {
    super(message);
    this.line = line;
    this.column = column;
  }
}

/**
 * Parse JSON text; returns {value, lines} where lines maps "a.b[0].c" → 1-based line of that path
 * (an object member's line is its key's line). Throws SpecSyntaxError with the line and column.
 */
export function parseJsonWithLines(text) {
  let i = 0;
  let line = 1;
  let lineStart = 0;
  const lines = new Map();
  const fail = (msg) => { throw new SpecSyntaxError(`${msg} (line ${line}, column ${i - lineStart + 1})`, line, i - lineStart + 1); };
  const ws = () => {
    for (;;) {
      const c = text[i];
      if (c === "\n") { line += 1; i += 1; lineStart = i; }
      else if (c === " " || c === "\t" || c === "\r") i += 1;
      else return;
    }
  };
  const str = () => {
    const start = i;
    i += 1;
    for (;;) {
      const c = text[i];
      if (c === undefined || c === "\n") fail("unterminated string");
      if (c === "\\") { i += 2; continue; }
      i += 1;
      if (c === '"') break;
    }
    try { return JSON.parse(text.slice(start, i)); } catch { fail("invalid string escape"); }
  };
  const value = (path) => {
    ws();
    lines.set(pathKey(path), line);
    const c = text[i];
    if (c === "{") {
      i += 1;
      const out = {};
      ws();
      if (text[i] === "}") { i += 1; return out; }
      for (;;) {
        ws();
        if (text[i] !== '"') fail(text[i] === "}" ? "trailing comma before }" : "expected a quoted key");
        const keyLine = line;
        const key = str();
        ws();
        if (text[i] !== ":") fail(`expected ':' after key "${key}"`);
        i += 1;
        const child = [...path, key];
        out[key] = value(child);
        lines.set(pathKey(child), keyLine);
        ws();
        if (text[i] === ",") { i += 1; continue; }
        if (text[i] === "}") { i += 1; return out; }
        fail("expected ',' or '}'");
      }
    }
    if (c === "[") {
      i += 1;
      const out = [];
      ws();
      if (text[i] === "]") { i += 1; return out; }
      for (;;) {
        out.push(value([...path, out.length]));
        ws();
        if (text[i] === ",") { i += 1; continue; }
        if (text[i] === "]") { i += 1; return out; }
        fail("expected ',' or ']'");
      }
    }
    if (c === '"') return str();
    const m = /^(?:-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null)/.exec(text.slice(i, i + 400));
    if (!m) fail(c === undefined ? "unexpected end of text" : `unexpected '${c}'`);
    i += m[0].length;
    return m[0] === "true" ? true : m[0] === "false" ? false : m[0] === "null" ? null : Number(m[0]);
  };
  const result = value([]);
  ws();
  if (i < text.length) fail("unexpected text after the end of the JSON value");
  return {value: result, lines};
}

/** Parse editor text in `format` ("json" | "yaml"); resolves to {value, lines: Map}. */
export async function parseSpecText(text, format) {
  if (format === "json") return parseJsonWithLines(text);
  try {
    const out = await api("/ui/spec/parse", {method: "POST", body: {text}});
    return {value: out.spec, lines: new Map(Object.entries(out.lines))};
  } catch (err) {
    const d = Array.isArray(err.detail) ? err.detail[0] : null;
    if (err.status === 422 && d) throw new SpecSyntaxError(d.msg, d.ctx?.line ?? 1, d.ctx?.column ?? 1);
    throw err;
  }
}

// -- YAML output ----------------------------------------------------------------------------------

const PLAIN = /^[A-Za-z_][A-Za-z0-9_.\/:+-]*$/;
const RESERVED = /^(?:true|false|yes|no|on|off|null|y|n|~)$/i;

function scalar(v, flow = false) {
  if (v === null || v === undefined) return "null";
  if (typeof v === "boolean") return v ? "true" : "false";
  if (typeof v === "number") {
    if (!Number.isFinite(v)) return "null";
    const s = String(v);
    // PyYAML (YAML 1.1) reads 1e-7 as a string: a float needs a dot before its exponent
    return /e/.test(s) && !s.includes(".") ? s.replace("e", ".0e") : s;
  }
  const s = String(v);
  // plain when it cannot be read back as anything but this string; else JSON quoting (valid YAML)
  const plain = PLAIN.test(s) && !RESERVED.test(s) && !/^[0-9.+-]/.test(s) && !s.endsWith(":") &&
    !(flow ? s.includes(":") : s.includes(": "));
  return plain ? s : JSON.stringify(s);
}

function key(k) { return PLAIN.test(k) && !RESERVED.test(k) && !k.includes(":") ? k : JSON.stringify(k); }

const isObj = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const isEmpty = (v) => (Array.isArray(v) ? v.length === 0 : isObj(v) && Object.keys(v).length === 0);
const isFlowList = (v) => Array.isArray(v) && v.every((x) => x === null || typeof x !== "object");

/** A block-style YAML document of a JSON value (flow style for empty containers and scalar lists). */
export function toYaml(value, indent = 0) {
  const pad = " ".repeat(indent);
  if (isObj(value)) {
    if (isEmpty(value)) return `${pad}{}\n`;
    let out = "";
    for (const [k, v] of Object.entries(value)) {
      if ((isObj(v) || Array.isArray(v)) && !isEmpty(v) && !isFlowList(v)) out += `${pad}${key(k)}:\n${toYaml(v, indent + 2)}`;
      else out += `${pad}${key(k)}: ${block(v)}\n`;
    }
    return out;
  }
  if (Array.isArray(value)) {
    if (isFlowList(value)) return `${pad}${inline(value)}\n`;
    let out = "";
    for (const item of value) {
      if ((isObj(item) || Array.isArray(item)) && !isEmpty(item) && !isFlowList(item)) {
        const body = toYaml(item, indent + 2);
        out += `${pad}- ${body.slice(indent + 2)}`; // the first line goes after the dash
      } else out += `${pad}- ${block(item)}\n`;
    }
    return out;
  }
  return `${pad}${scalar(value)}\n`;
}

/** A scalar in block context, or a (small) container in flow style. */
function block(v) { return v !== null && typeof v === "object" ? inline(v) : scalar(v); }

function inline(v) {
  if (Array.isArray(v)) return `[${v.map(inline).join(", ")}]`;
  if (isObj(v)) return isEmpty(v) ? "{}" : `{${Object.entries(v).map(([k, x]) => `${key(k)}: ${inline(x)}`).join(", ")}}`;
  return scalar(v, true);
}

export function toText(value, format) {
  return format === "yaml" ? toYaml(value) : `${JSON.stringify(value, null, 2)}\n`;
}
