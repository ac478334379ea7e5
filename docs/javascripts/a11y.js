// Material wraps wide tables in a scrolling box at run time; make each one reachable by keyboard
// (axe: scrollable-region-focusable).
document$.subscribe(function () {
  document.querySelectorAll(".md-typeset__scrollwrap").forEach(function (box) { box.tabIndex = 0; });
});
