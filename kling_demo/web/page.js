// The page's browser-side helpers, run once when the page loads (Gradio's `launch(js=…)` takes one function).
// Event handlers call them as `window.klingDemo.<name>(…)`: no server round trip for a counter or a title.
() => {
  window.klingDemo = {
    // A name for the job a Generate or Resume click starts, known to the page before the server hears of it,
    // so that a Stop pressed at once finds that job (or keeps it from starting). Asks once to notify.
    // `shown`: the part of the page that answers, brought into view (Resume's status, far above its button).
    newJob(shown) {
      if (shown) this.show(shown);
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
    // A number typed into a slider's box, brought into the slider's range; a box half typed (empty, "-") is
    // left as it is.
    within(value, lowest, highest) {
      if (value === null || value === '' || !Number.isFinite(Number(value))) return value;
      return Math.min(highest, Math.max(lowest, Number(value)));
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
    // Bring a part of the page into view after an action changed it (e.g. the form after "Reuse these settings"),
    // unless all of it is in view already.
    show(elemId) {
      const element = document.getElementById(elemId);
      if (!element) return;
      const box = element.getBoundingClientRect();
      if (box.top >= 0 && box.bottom <= window.innerHeight) return;
      element.scrollIntoView({behavior: 'smooth', block: 'start'});
    },
    // The key's balance and the budgets as they are now, when the visitor comes back to the page (a job may have
    // finished, or a limit freed, meanwhile): a click of the hidden refresh button, at most every 2 s.
    refreshMoney() {
      const now = Date.now();
      if (document.hidden || now - (this.moneyAt || 0) < 2000) return;
      this.moneyAt = now;
      this.refreshMoneyNow();
    },
    // The same at once (after a job).
    refreshMoneyNow() {
      const button = document.getElementById('money-refresh');
      if (button) button.click();
    },
  };
  window.addEventListener('focus', () => window.klingDemo.refreshMoney());
  document.addEventListener('visibilitychange', () => window.klingDemo.refreshMoney());
}
