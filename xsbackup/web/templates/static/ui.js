// Progressive enhancement only: every page works without this file.
// The dashboard's filter narrows the table as you type (the form still works alone).
(function () {
  "use strict";
  var input = document.getElementById("filter");
  var table = document.getElementById("clients");
  var count = document.getElementById("filter-count");
  if (!input || !table) {
    return;
  }
  input.addEventListener("input", function () {
    var needle = input.value.trim().toLowerCase();
    var shown = 0;
    var rows = table.tBodies[0].rows;
    for (var i = 0; i < rows.length; i++) {
      var hay = rows[i].getAttribute("data-filter") || "";
      var hit = needle === "" || hay.indexOf(needle) !== -1;
      rows[i].hidden = !hit;
      if (hit) {
        shown++;
      }
    }
    if (count) {
      count.textContent = shown + " shown";
    }
  });
})();
