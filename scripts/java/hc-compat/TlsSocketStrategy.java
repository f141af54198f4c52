package org.apache.hc.client5.http.ssl;

/**
 * A stand-in for HttpClient 5.4's interface of this name, absent from Debian's 5.2.1.
 *
 * <p>Iceberg's REST client (org.apache.iceberg.rest.HTTPClient) passes a TLS strategy to
 * PoolingHttpClientConnectionManagerBuilder.setTlsSocketStrategy, a 5.4 method, only when
 * {@code rest.client.tls.configurer-impl} is set; the tests never set it. The JVM's verifier
 * still loads this type when it checks HTTPClient, so it has to exist: an empty interface is
 * enough (the verifier treats interface types as assignable from any object).
 */
public interface TlsSocketStrategy {}
