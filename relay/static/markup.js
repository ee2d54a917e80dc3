// The widget's markup: what `<avatar-relay>` puts in its shadow root, in the widget's language. Every word comes from
// i18n.js through `t` and is escaped here (the tables are ours, but nothing is ever parsed as HTML unescaped). The
// ids are the shadow root's own: two widgets on one page never share one. `part` names are the host page's hooks
// for theming (docs/embedding.md); so are the --avatar-relay-* custom properties in widget.css.

const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
const e = (text) => String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);

/** @param {(key: string, vars?: object) => string} t */
export function widgetMarkup(t) {
  return `
<div class="widget" part="widget" role="region" aria-label="${e(t('widget.label'))}">
  <a id="skip-link" class="skip-link" href="#captions">${e(t('skip.captions'))}</a>
  <p id="status" class="status" part="status" role="status" data-state="idle"><span class="dot" aria-hidden="true"></span><span id="status-text">${e(t('status.idle'))}</span></p>
  <div class="layout">
    <section class="stage-panel" part="panel stage-panel" aria-label="${e(t('stage.label'))}">
      <div id="stage" class="stage" part="stage" data-mode="idle">
        <video id="avatar-video" class="avatar-video" playsinline autoplay hidden></video>
        <audio id="avatar-audio" autoplay hidden></audio>
        <svg id="sim-face" class="sim-face" viewBox="0 0 240 240" role="img" aria-label="${e(t('face.label'))}" hidden>
          <defs>
            <radialGradient id="skin" cx="45%" cy="40%" r="70%">
              <stop offset="0%" stop-color="#f8d2b0"/>
              <stop offset="100%" stop-color="#e7ab84"/>
            </radialGradient>
            <linearGradient id="shirt" x1="0" y1="0" x2="0" y2="1">
              <stop offset="0%" stop-color="#5b7cfa"/>
              <stop offset="100%" stop-color="#3f56c4"/>
            </linearGradient>
            <clipPath id="mouth-clip"><path id="mouth-clip-shape" d="M98 156 Q120 153 142 156 Q120 162 98 156 Z"/></clipPath>
          </defs>
          <g id="head">
            <path d="M34 240 C 40 196, 80 186, 120 186 C 160 186, 200 196, 206 240 Z" fill="url(#shirt)"/>
            <path d="M104 170 h32 v26 q-16 10 -32 0 z" fill="#dc9c76"/>
            <ellipse cx="60" cy="118" rx="10" ry="16" fill="#e4a47c"/>
            <ellipse cx="180" cy="118" rx="10" ry="16" fill="#e4a47c"/>
            <ellipse cx="120" cy="114" rx="60" ry="70" fill="url(#skin)"/>
            <path d="M60 112 C 52 52, 96 30, 126 32 C 168 34, 192 66, 181 112 C 177 88, 166 72, 146 64 C 126 78, 92 80, 66 92 C 62 98, 61 104, 60 112 Z" fill="#3a2a22"/>
            <g id="brows" stroke="#3a2a22" stroke-width="4" stroke-linecap="round" fill="none">
              <path d="M86 98 Q97 91 109 96"/>
              <path d="M131 96 Q143 91 154 98"/>
            </g>
            <g class="eye" data-cx="98" data-cy="114">
              <ellipse cx="98" cy="114" rx="11" ry="8.5" fill="#fff"/>
              <circle cx="99" cy="114" r="5.6" fill="#3d5a80"/>
              <circle cx="99" cy="114" r="2.7" fill="#0f172a"/>
              <circle cx="101" cy="112" r="1.4" fill="#fff"/>
            </g>
            <g class="eye" data-cx="142" data-cy="114">
              <ellipse cx="142" cy="114" rx="11" ry="8.5" fill="#fff"/>
              <circle cx="143" cy="114" r="5.6" fill="#3d5a80"/>
              <circle cx="143" cy="114" r="2.7" fill="#0f172a"/>
              <circle cx="145" cy="112" r="1.4" fill="#fff"/>
            </g>
            <path d="M121 120 Q114 136 122 138" stroke="#c98a66" stroke-width="3" stroke-linecap="round" fill="none"/>
            <circle cx="88" cy="142" r="10" fill="#f08c8c" opacity="0.3"/>
            <circle cx="152" cy="142" r="10" fill="#f08c8c" opacity="0.3"/>
            <g clip-path="url(#mouth-clip)">
              <rect x="98" y="140" width="44" height="60" fill="#5a1a26"/>
              <rect x="104" y="151" width="32" height="6" rx="2" fill="#fbfbf7"/>
              <ellipse id="tongue" cx="120" cy="162" rx="12" ry="7" fill="#d9606e"/>
            </g>
            <path id="mouth-shape" d="M98 156 Q120 153 142 156 Q120 162 98 156 Z" fill="none" stroke="#b24e5a" stroke-width="2.5" stroke-linejoin="round"/>
          </g>
        </svg>
        <div id="voice-orb" class="voice-orb" aria-hidden="true"><span></span></div>
        <p id="stage-label" class="stage-label">${e(t('stage.idle'))}</p>
        <!-- The words the agent is saying right now; the captions list (an aria-live region) carries them for screen readers. -->
        <p id="subtitle" class="subtitle" part="subtitle" aria-hidden="true" hidden></p>
      </div>

      <p id="notice" class="notice" part="notice" role="alert" hidden></p>
      <button id="enable-audio" class="button secondary" type="button" hidden>${e(t('button.enable_audio'))}</button>

      <div class="controls" part="controls" role="group" aria-label="${e(t('controls.label'))}">
        <button id="start" class="button primary" part="button start-button" type="button">${e(t('button.start'))}</button>
        <button id="mute" class="button" part="button mute-button" type="button" aria-pressed="false" disabled>${e(t('button.mute'))}</button>
        <button id="interrupt" class="button" part="button interrupt-button" type="button" disabled>${e(t('button.interrupt'))}</button>
        <button id="stop" class="button danger" part="button stop-button" type="button" disabled>${e(t('button.stop'))}</button>
      </div>

      <div id="mic-choice" class="mic-choice" hidden>
        <label for="mic-select" class="meter-label">${e(t('mic.label'))}</label>
        <select id="mic-select" class="select" part="mic-select"></select>
      </div>

      <div class="meters">
        <div class="meter-row">
          <span id="mic-meter-label" class="meter-label">${e(t('meter.mic'))}</span>
          <div id="mic-meter" class="meter" role="meter" aria-labelledby="mic-meter-label" aria-valuemin="0" aria-valuemax="100" aria-valuenow="0"><span></span></div>
        </div>
        <div class="meter-row">
          <span id="out-meter-label" class="meter-label">${e(t('meter.agent'))}</span>
          <div id="out-meter" class="meter" role="meter" aria-labelledby="out-meter-label" aria-valuemin="0" aria-valuemax="100" aria-valuenow="0"><span></span></div>
        </div>
      </div>
    </section>

    <section id="captions" class="conversation-panel" part="panel captions" aria-labelledby="captions-heading" tabindex="-1">
      <h2 id="captions-heading">${e(t('captions.heading'))}</h2>
      <ol id="transcript" class="transcript" part="transcript" aria-live="polite" aria-relevant="additions text" data-empty="${e(t('captions.empty'))}"></ol>
      <ul id="activity" class="activity" aria-live="polite" aria-label="${e(t('activity.label'))}"></ul>
      <form id="text-form" class="text-form">
        <label for="text-input" class="visually-hidden">${e(t('input.label'))}</label>
        <input id="text-input" part="text-input" type="text" placeholder="${e(t('input.placeholder'))}" autocomplete="off" enterkeyhint="send" disabled>
        <button id="send" class="button primary" part="button send-button" type="submit" disabled>${e(t('button.send'))}</button>
      </form>
    </section>
  </div>

  <dialog id="approval" class="approval" part="approval" aria-labelledby="approval-title" aria-describedby="approval-ask">
    <h2 id="approval-title">${e(t('approval.title'))}</h2>
    <p id="approval-ask" class="approval-ask">${e(t('approval.ask'))} <strong id="approval-tool"></strong> <span id="approval-service"></span></p>
    <p id="approval-description" class="approval-description" hidden></p>
    <dl id="approval-params" class="approval-params" hidden></dl>
    <p id="approval-countdown" class="approval-countdown"></p>
    <div id="approval-bar" class="meter approval-bar" aria-hidden="true"><span></span></div>
    <div class="approval-buttons">
      <button id="approval-deny" class="button danger" type="button">${e(t('approval.deny'))}</button>
      <button id="approval-approve" class="button primary" type="button">${e(t('approval.approve'))}</button>
    </div>
  </dialog>
</div>`;
}
