// Show every <time datetime="..."> in the reader's local time zone; the UTC text
// stays as the title. Served from this origin (CSP script-src 'self'); no inline script.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    var when = new Date(el.getAttribute("datetime"));
    if (isNaN(when.getTime())) return;
    el.title = el.textContent;
    el.textContent = when.toLocaleString(undefined, {
      year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
    });
    el.classList.add("local");
  });
});
