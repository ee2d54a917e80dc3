// Resuming behind a proxy (docs/deploy.md "Resuming behind a proxy"): the `resume` frame is the first WebSocket
// message, which a proxy never reads, so the page also names the relay that holds the conversation (the resume
// token's readable route) in the URL it opens, `?relay=<route>`; a new conversation's URL names none.

import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';

import { loadPage, settle } from './harness.mjs';

let page;

afterEach(() => {
  assert.deepEqual(page?.errors ?? [], [], 'the page logged an error');
});

test('a resume opens /ws?relay=<the token\'s route>; a start names no relay', async () => {
  page = await loadPage();
  const first = await page.start({ resume_token: 'rt1.relay-b-w1.AAAAAAAAAAAAAAAAAAAAAA.1700000100.mac', resume_window: 20 });
  assert.equal(new URL(first.url).searchParams.get('relay'), null);
  assert.equal(first.sentOf('start').length, 1);

  first.drop(1006);
  await page.clock.advance(0);
  await settle();
  const retry = page.socket();
  assert.notEqual(retry, first, 'the page reconnected');
  const url = new URL(retry.url);
  assert.equal(url.pathname, '/ws');
  assert.equal(url.searchParams.get('relay'), 'relay-b-w1');
  retry.open();
  await settle();
  assert.deepEqual(retry.sentOf('resume').map((m) => m.resume_token),
    ['rt1.relay-b-w1.AAAAAAAAAAAAAAAAAAAAAA.1700000100.mac']);
});
