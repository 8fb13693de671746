window.addEventListener('load', function () {
  var missing = [];
  document.querySelectorAll('img').forEach(function (img) {
    if (!(img.complete && img.naturalWidth > 0)) {
      missing.push(img.getAttribute('src'));
      var note = document.createElement('p');
      note.className = 'missing-image';
      note.textContent = 'Picture missing: ' + img.getAttribute('src') + ' (run `moesim plot` on this directory)';
      img.replaceWith(note);
    }
  });
  document.body.dataset.images = missing.length ? 'missing: ' + missing.join(' ') :
    'ok ' + document.querySelectorAll('img').length;
});
