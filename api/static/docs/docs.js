'use strict';
// The reference renders this server's own OpenAPI document (beside this page, at
// ../openapi.json); "Authorize" takes an API key, which stays in the page.
window.addEventListener('DOMContentLoaded', function () {
  window.ui = SwaggerUIBundle({
    url: new URL('../openapi.json', window.location.href).href,
    dom_id: '#api-reference',
    deepLinking: true,
    persistAuthorization: false,
    tryItOutEnabled: false,
  });
});
