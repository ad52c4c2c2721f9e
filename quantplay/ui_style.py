"""The page's CSS: readable colours in both themes, the token popovers, presenter mode and the phone layout.

Passed to `launch()` by `ui.launch_kwargs` (gradio 6 takes css there, not in Blocks).
"""

CSS = """
.qp-out textarea { font-size: var(--qp-answer, 1.05rem) !important; line-height: 1.45 !important; }
.qp-stats { font-size: var(--qp-stats, 0.95rem); }
.qp-tokens { font-size: var(--qp-stats, 1.05rem); line-height: 2.1; margin-bottom: 0.8rem; }
.qp-tok { padding: 1px 2px; border-radius: 3px; white-space: pre-wrap; }
.qp-miss { outline: 2px solid #0072B2; text-decoration: underline; }
.dark .qp-miss { outline-color: #56B4E9; }
body:not(.dark) { --body-text-color-subdued: #71717a; }  /* gradio's light default (#bbbbc2) is 1.9:1 on white */
.qp-legend { font-size: 0.9rem; }
.qp-tok[tabindex] { position: relative; cursor: pointer; }
.qp-tip { display: none; position: absolute; left: 0; top: 1.7em; z-index: 30; width: max-content;
  max-width: min(28rem, 85vw); padding: 0.5rem 0.75rem; font-size: 1rem; line-height: 1.45; white-space: normal;
  background: var(--background-fill-primary); color: var(--body-text-color); border: 1px solid var(--border-color-primary);
  border-radius: 6px; box-shadow: 0 3px 12px rgba(0, 0, 0, 0.3); }
.qp-tok:hover > .qp-tip, .qp-tok:focus > .qp-tip { display: block; }
.qp-note { font-size: 0.9rem; }
/* Blind mode (ui_panels.blind_panel): names and figures hidden until Reveal, a letter over each column */
body.qp-blind:not(.qp-revealed) :is([id^=col-head-], [id^=col-stats-], #status, #readings, #agreement,
  [id^=tokens-], #weights-panel, #footprint-plot, #code-panel, #memory-panel, #download-json, #metric-note) {
  visibility: hidden !important; }
body.qp-blind .qp-col[data-letter]::before { content: "Column " attr(data-letter); font-weight: 700;
  font-size: var(--qp-stats, 1.05rem); color: var(--body-text-color); }
#blind-verdict { font-size: 1rem; color: var(--body-text-color); }
.qp-heat { border-collapse: collapse; font-size: 0.75rem; margin: 0.3rem 0 1rem 0; }
.qp-heat caption { text-align: left; font-size: 0.9rem; padding-bottom: 0.2rem; }
.qp-heat th, .qp-heat td { padding: 1px 5px; border: 1px solid var(--border-color-primary); text-align: right; }
.qp-head { padding-left: 2px; overflow: visible !important; }
.qp-head h3 { margin: 0 0 2px 0 !important; }
.qp-head p { margin: 0 !important; }
.qp-stats p { margin: 0.2rem 0 !important; }
.qp-stats p:first-child { font-size: var(--qp-summary, 1.02rem); }
/* Presenter mode sets sizes as variables on <body>: gradio re-scopes each rule under its container with a
   higher specificity, so `body.qp-presenter .x` rules would lose to it; inherited variables do not compete. */
body.qp-presenter { --qp-answer: 1.6rem; --qp-stats: 1.3rem; --qp-summary: 1.45rem; }
#prompt textarea { font-size: var(--qp-answer, var(--input-text-size)) !important; }
#status { font-size: var(--qp-stats, inherit); }
.qp-table, #reference-scores, #estimates, #cache-table { max-width: 100%; overflow-x: auto; }
@media (max-width: 640px) {
  #qp-top { flex-direction: column; }
  #qp-top > .qp-side, #qp-top > .qp-main { display: contents; }
  #qp-top .qp-prompt-area { order: -2; }
  #qp-top > .qp-side > * { order: -1; }
  #qp-top > .qp-main > * { min-width: 0; width: 100%; }
  #columns { flex-wrap: nowrap !important; overflow-x: auto; scroll-snap-type: x mandatory; }
  #columns > .qp-col { min-width: 85% !important; scroll-snap-align: start; }
}
"""
