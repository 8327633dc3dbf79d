import { createRoot } from 'react-dom/client';
import { App } from './App';
import { takeTokenFromUrl } from './api';
import { prefetchFirstPage } from './api-disks';
import './styles.css';

performance.mark('sparsify:script');
takeTokenFromUrl();
// The first page of disks is on its way while React renders the page around it.
prefetchFirstPage();
createRoot(document.getElementById('root')!).render(<App />);
