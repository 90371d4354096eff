/*
 * OHIF Viewer configuration for the dicomnode compose stack.
 *
 * The browser loads OHIF and talks DICOMweb to Orthanc through the same origin
 * (the "proxy" service, http://localhost:3000): /dicom-web/ is forwarded to
 * Orthanc's DICOMweb plugin, so no CORS setup is needed. The proxy serves this
 * file as /app-config.js in place of the one inside the OHIF image.
 */
const origin = window.location.origin;

window.config = {
  routerBasename: '/',
  showStudyList: true,
  extensions: [],
  modes: [],
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (dicomnode results)',
        name: 'orthanc',
        qidoRoot: `${origin}/dicom-web`,
        wadoRoot: `${origin}/dicom-web`,
        wadoUriRoot: `${origin}/wado`,
        qidoSupportsIncludeField: false,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        dicomUploadEnabled: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
