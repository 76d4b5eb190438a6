// The WeChat Pay page (bot/payments/pay_page.py): hands the server-signed parameters to
// WeixinJSBridge's getBrandWCPayRequest. The answer here only says what the rider did; the
// money is credited by WeChat Pay's notification, and the chat says so.
(function () {
  'use strict';
  var data = JSON.parse(document.getElementById('pay-data').textContent);
  var text = data.text;
  var pay = document.getElementById('pay');
  var back = document.getElementById('back');
  var status = document.getElementById('status');
  var busy = false;

  function say(key) { status.textContent = text[key]; }

  function bridge() { return typeof WeixinJSBridge !== 'undefined' ? WeixinJSBridge : null; }

  function invoke() {
    var jsb = bridge();
    if (!jsb) { say('not_wechat'); return; }
    if (busy) return;
    busy = true;
    pay.disabled = true;
    say('paying');
    jsb.invoke('getBrandWCPayRequest', data.params, function (res) {
      busy = false;
      var answer = res && res.err_msg;
      if (answer === 'get_brand_wcpay_request:ok') {
        say('paid');
        pay.hidden = true;
        back.hidden = false;
        return;
      }
      say(answer === 'get_brand_wcpay_request:cancel' ? 'cancelled' : 'failed');
      pay.textContent = text.retry;
      pay.disabled = false;
    });
  }

  pay.addEventListener('click', invoke);
  back.addEventListener('click', function () {
    var jsb = bridge();
    if (jsb) jsb.call('closeWindow');
  });

  if (bridge()) {
    invoke();
  } else {
    // WeChat injects the bridge a moment after the page loads; elsewhere it never comes.
    document.addEventListener('WeixinJSBridgeReady', invoke, false);
    setTimeout(function () { if (!bridge()) say('not_wechat'); }, 3000);
  }
}());
