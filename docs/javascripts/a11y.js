// Material wraps wide tables in a scrolling box at run time; make each one reachable by keyboard
// (axe: scrollable-region-focusable).
document$.subscribe(function () {
  document.querySelectorAll(".md-typeset__scrollwrap").forEach(function (box) { box.tabIndex = 0; });
});

// The language switch keeps the section a reader is in: both editions give each heading the same id
// (`## … {#the-cuda-context}`), so /chapters/real-gpu/#the-cuda-context becomes /zh/chapters/real-gpu/#the-cuda-context.
document.addEventListener("click", function (event) {
  var link = event.target.closest && event.target.closest("a.md-select__link[hreflang]");
  if (link && location.hash && !link.hash) { link.hash = location.hash; }
}, true);
