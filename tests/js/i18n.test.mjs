// The widget's words (relay/static/i18n.js): English and Spanish complete and consistent, and every key the widget
// asks for is in the tables. (tests/test_widget_contract.py checks that every reason the relay can give has words.)

import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { test } from 'node:test';

import { STATIC } from './harness.mjs';

const { STRINGS, pickLanguage, translator } = await import(new URL('i18n.js', STATIC).href);

const placeholders = (text) => [...text.matchAll(/\{(\w+)\}/g)].map((m) => m[1]).sort();

test('English and Spanish have exactly the same keys', () => {
  const en = Object.keys(STRINGS.en).sort();
  const es = Object.keys(STRINGS.es).sort();
  assert.deepEqual(en.filter((key) => !es.includes(key)), [], 'keys Spanish lacks');
  assert.deepEqual(es.filter((key) => !en.includes(key)), [], 'keys English lacks');
});

test('every string is filled in and a translation keeps its placeholders', () => {
  for (const [lang, table] of Object.entries(STRINGS)) {
    for (const [key, text] of Object.entries(table)) {
      assert.ok(typeof text === 'string' && text.trim(), `${lang} ${key} is empty`);
      assert.deepEqual(placeholders(text), placeholders(STRINGS.en[key]), `${lang} ${key} placeholders`);
    }
  }
});

test('every key the widget asks for is in the tables', () => {
  const used = new Set();
  for (const file of readdirSync(STATIC).filter((name) => name.endsWith('.js'))) {
    const source = readFileSync(new URL(file, STATIC), 'utf8');
    for (const match of source.matchAll(/\bt\(\s*'([a-z_]+(?:\.[a-z_]+)+)'/g)) used.add(match[1]);
    for (const match of source.matchAll(/\bt\([^()]*?\?\s*'([a-z_.]+)'\s*:\s*'([a-z_.]+)'/g)) {
      used.add(match[1]);
      used.add(match[2]);
    }
  }
  // Keys made from a name: the well-known tools' chips and the tool states.
  const activity = readFileSync(new URL('activity.js', STATIC), 'utf8');
  const tools = [...activity.match(/KNOWN_TOOLS = new Set\(\[([^\]]*)\]/)[1].matchAll(/'(\w+)'/g)].map((m) => m[1]);
  for (const tool of tools) for (const state of ['running', 'done', 'failed']) used.add(`chip.${tool}.${state}`);
  for (const state of ['done', 'failed']) used.add(`state.${state}`);
  assert.ok(used.size > 60, `found only ${used.size} keys in use: the scan is broken`);
  const missing = [...used].filter((key) => !(key in STRINGS.en)).sort();
  assert.deepEqual(missing, [], 'keys used by the widget but missing from the tables');
});

test('the language is the first of element, page and browser that has a table, else English', () => {
  assert.equal(pickLanguage('es'), 'es');
  assert.equal(pickLanguage(null, 'es-MX', 'en'), 'es');
  assert.equal(pickLanguage('fr', undefined, ['de-DE', 'es-419']), 'es');
  assert.equal(pickLanguage('', null, ['fr']), 'en');
  assert.equal(pickLanguage(['EN-gb']), 'en');
});

test('t() fills placeholders and never returns nothing', () => {
  const t = translator('es');
  assert.equal(t('status.ended', { reason: t('reason.client_stop') }), 'Conversación terminada: la has terminado tú.');
  assert.equal(t('no.such.key'), 'no.such.key');
  assert.equal(translator('xx').lang, 'en');
});
