// The page's browser-side helpers, run once when the page loads (Gradio's `launch(js=…)` takes one function).
// Event handlers call them as `window.klingDemo.<name>(…)`: no server round trip for a counter or a title.
() => {
  window.klingDemo = {
    // A name for the job a Generate or Resume click starts, known to the page before the server hears of it,
    // so that a Stop pressed at once finds that job (or keeps it from starting). Asks once to notify.
    newJob() {
      if ('Notification' in window && Notification.permission === 'default') { Notification.requestPermission(); }
      return Date.now().toString(36) + '-' + Math.random().toString(36).slice(2, 12);
    },
    // The character counter under a text box capped at `cap`: shown from 80 % of the cap.
    counter(text, cap) {
      const n = (text || '').length;
      if (n < cap * 0.8) return '';
      return n.toLocaleString('en') + ' / ' + cap.toLocaleString('en') + ' characters' +
        (n >= cap ? ' (the most this field takes)' : '');
    },
    // A finished video in a background tab: the title says so, and a notification if the visitor allowed it.
    notify(stage) {
      if (!document.hidden || stage !== 'done') return;
      const title = document.title;
      document.title = '✅ Your video is ready · ' + title;
      const back = () => {
        if (!document.hidden) { document.title = title; document.removeEventListener('visibilitychange', back); }
      };
      document.addEventListener('visibilitychange', back);
      if ('Notification' in window && Notification.permission === 'granted') {
        new Notification('Your video is ready', {body: 'Kling 2.0 image-to-video: come back to the tab to watch it.'});
      }
    },
    // A job picked up as the page loads: bring its status into view unless it is near the top of the screen already,
    // with `withId` (Stop) above it when that fits too (a phone, where the form comes first).
    reveal(elemId, withId) {
      const element = document.getElementById(elemId);
      if (!element) return;
      const top = element.getBoundingClientRect().top;
      if (top >= 0 && top <= window.innerHeight / 2) return;
      const above = document.getElementById(withId);
      const from = above ? above.getBoundingClientRect().top : top;
      (from < top && top - from < window.innerHeight / 2 ? above : element).scrollIntoView({block: 'start'});
    },
    // Bring a part of the page into view after an action changed it (e.g. the form after "Reuse these settings").
    show(elemId) {
      const element = document.getElementById(elemId);
      if (element) element.scrollIntoView({behavior: 'smooth', block: 'start'});
    },
  };
}
